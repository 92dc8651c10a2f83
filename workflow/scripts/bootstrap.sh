#!/usr/bin/env bash
# Set up quantpipe on a fresh machine: a virtual environment in .venv with the pinned packages
# (envs/quantpipe.txt) and the quantpipe package installed editable. Safe to run again: it only
# does what is missing. It writes nothing outside this checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "bootstrap: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
stamp=.venv/.quantpipe-installed
if [[ ! -f $stamp ]] || ! cmp -s envs/quantpipe.txt "$stamp"; then
    echo "bootstrap: installing pinned packages from envs/quantpipe.txt (about a minute)"
    .venv/bin/pip install --quiet --disable-pip-version-check -r envs/quantpipe.txt 2>&1 \
        | grep -v "^WARNING: Location" || true
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e . 2>&1 \
        | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import quantpipe, torch, torchao, snakemake, submitit, pandas"
    cp envs/quantpipe.txt "$stamp"
fi
# The executor plugin `quantpipe` (workflow/executor; profiles/slurm selects it), editable like quantpipe.
if ! .venv/bin/python -c "import snakemake_executor_plugin_quantpipe" 2>/dev/null; then
    echo "bootstrap: installing the executor plugin quantpipe (workflow/executor)"
    # compat: a path entry, which Snakemake's plugin search (pkgutil.iter_modules) sees; the default
    # editable mode installs an import hook, which it does not.
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps \
        --config-settings editable_mode=compat -e workflow/executor 2>&1 \
        | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import snakemake_executor_plugin_quantpipe"
fi

# `snakemake --profile slurm` run here finds ./slurm, this checkout's link to profiles/slurm,
# before any profile of that name in ~/.config/snakemake. One there matters only for runs from
# other directories: say so when it is not this checkout's.
profile=${XDG_CONFIG_HOME:-$HOME/.config}/snakemake/slurm
if [[ -L $profile && ! -e $profile ]]; then
    echo "bootstrap: note: $profile is a broken link (to $(readlink "$profile")), perhaps left by a" \
        "deleted checkout; runs from this checkout use ./slurm. Remove it: rm '$profile'"
elif [[ -e $profile && $(readlink -f "$profile") != "$repo/profiles/slurm" ]]; then
    echo "bootstrap: note: $profile is another Slurm profile ($(readlink -f "$profile")); runs" \
        "from this checkout use ./slurm (its profiles/slurm). Left as it is."
fi
echo "bootstrap: ready (.venv/bin/snakemake; from this checkout, --profile slurm is $repo/profiles/slurm)"
