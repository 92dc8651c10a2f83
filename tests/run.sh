#!/usr/bin/env bash
# The test command (README.md, docs/development.md). It installs what the tests need, then
# runs one tier:
#   bash tests/run.sh        full: every test, with the peer runtimes and a real single-node Slurm
#                            (munge, MariaDB, slurmdbd, slurmctld, slurmd), on 2 pytest-xdist
#                            workers (the Slurm tests on one, one at a time; the rest on the other)
#   bash tests/run.sh fast   units and quantize on tiny inputs: no Slurm, no whole DAG, nothing
#                            slow (the tier to run while working)
#   bash tests/run.sh gpu    the GPU tier: training, benchmarks and QAT on CUDA; fails without a
#                            usable GPU
# Further arguments go to pytest, e.g. `bash tests/run.sh fast -k quantize`.
# The full tier stops the local Slurm's daemons when it ends if it started them; with
# QUANTPIPE_KEEP_SLURM=1 it leaves them running for the next run (which then starts in seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
tier=full
case "${1:-}" in fast | full | gpu) tier=$1 && shift ;; esac

bash workflow/scripts/bootstrap.sh
# The two test workers share the cores, and so do the jobs they start. An OpenMP thread that spins
# while it waits for work (libgomp's default) burns the CPU the other worker's job needs: two
# 2-thread training loops at once took 17.4-18.5 s each spinning and 4.9-5.9 s each sleeping
# (alone: 2.5 and 3.7 s; workflow/scripts/thread_contention.py, docs/development.md). A pipeline
# run keeps the default: its jobs run one at a time here, or on CPUs Slurm gave them.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
# The workflow tests find `snakemake` the way a user does.
export PATH="$PWD/.venv/bin:$PATH"
case $tier in
fast) exec .venv/bin/pytest -ra -n 2 -m "not slurm and not workflow and not slow and not gpu" "$@" ;;
gpu) QUANTPIPE_REQUIRE_GPU=1 exec .venv/bin/pytest -ra -m gpu "$@" ;;
esac

# The optional peer runtimes (ONNX Runtime, OpenVINO) are tested too.
.venv/bin/pip install --quiet --disable-pip-version-check -r envs/peers.txt 2>&1 \
    | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import onnxruntime, openvino, nncf"
# The executor plugin's test keeps 200 jobs in flight: the node declares that many CPUs (takes
# effect on a fresh start; a cluster already up with fewer fails that test, saying so).
export QUANTPIPE_SLURM_CPUS=${QUANTPIPE_SLURM_CPUS:-256}
if bash workflow/scripts/local_slurm.sh status >/dev/null 2>&1 || [[ ${QUANTPIPE_KEEP_SLURM:-} == 1 ]]; then
    echo "tests/run.sh: the local Slurm stays up after the tests"
else
    trap 'bash workflow/scripts/local_slurm.sh stop' EXIT
fi
bash workflow/scripts/local_slurm.sh start
# Slurm's clients, and the jobs the tests submit, find that cluster through SLURM_CONF.
eval "$(bash workflow/scripts/local_slurm.sh env)"
# Under this command a missing Slurm fails the Slurm tests instead of skipping them.
export QUANTPIPE_REQUIRE_SLURM=1
.venv/bin/pytest -ra -n 2 --dist loadgroup --no-loadscope-reorder "$@"
