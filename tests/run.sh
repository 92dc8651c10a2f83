#!/usr/bin/env bash
# The test command (README.md): installs what the tests need -- the pinned .venv and a real
# single-node Slurm (munge, MariaDB, slurmdbd, slurmctld, slurmd) -- then runs every test.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not workflow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash workflow/scripts/bootstrap.sh
# The optional peer runtimes (ONNX Runtime, OpenVINO) are tested too.
.venv/bin/pip install --quiet --disable-pip-version-check -r envs/peers.txt 2>&1 \
    | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import onnxruntime, openvino, nncf"
bash workflow/scripts/local_slurm.sh start
# The workflow tests find `snakemake` and the `slurm` profile the way a user does.
export PATH="$PWD/.venv/bin:$PATH"
# Under this command a missing Slurm fails the Slurm tests instead of skipping them.
export QUANTPIPE_REQUIRE_SLURM=1
exec .venv/bin/pytest -ra "$@"
