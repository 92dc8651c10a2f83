#!/usr/bin/env bash
# Set up quantpipe on a fresh machine: a virtual environment in .venv with the pinned packages
# (envs/quantpipe.txt) and the quantpipe package installed editable, and the Slurm profile linked
# where `snakemake --profile slurm` finds it. Safe to run again: it only does what is missing.
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

# Snakemake finds `--profile NAME` in ~/.config/snakemake/NAME, never in ./profiles/.
profiles=${XDG_CONFIG_HOME:-$HOME/.config}/snakemake
mkdir -p "$profiles"
link=$profiles/slurm
if [[ -L $link && $(readlink "$link") != "$repo/profiles/slurm" ]]; then
    echo "bootstrap: note: $link points to $(readlink "$link"); relinking it to this checkout"
    ln -sfn "$repo/profiles/slurm" "$link"
elif [[ -e $link && ! -L $link ]]; then
    echo "bootstrap: $link exists and is not a link; leaving it. Use --profile $repo/profiles/slurm" >&2
elif [[ ! -e $link ]]; then
    ln -s "$repo/profiles/slurm" "$link"
fi
echo "bootstrap: ready (.venv/bin/snakemake; profile 'slurm' -> $(readlink -f "$link"))"
