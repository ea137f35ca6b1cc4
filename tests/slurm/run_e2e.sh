#!/usr/bin/env bash
# End-to-end test of the SLURM path: stands up the one-node cluster (tests/slurm/cluster.sh), submits the
# quick preset with the profile users get (workflow/profiles/slurm; account and partitions set through
# its environment variables for this cluster), runs the same preset locally, and compares the tables
# (tests/slurm/compare_runs.py). Tears the cluster down on exit.
#
#   tests/slurm/run_e2e.sh [WORKDIR]      (root; WORKDIR default: results/slurm-e2e)
#
# Exit 0: the SLURM run finished and its tables match the local run's. Exit 3: SLURM could not be
# installed or started here (the reason is printed); anything else: a failure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
WORK=${1:-results/slurm-e2e}
PY=${PYTHON:-$ROOT/.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH"   # snakemake and the job scripts use the project's environment
CLUSTER=tests/slurm/cluster.sh

say() { echo "[slurm-e2e] $*" >&2; }

$CLUSTER install || exit $?
export SLURM_CI_DIR=${SLURM_CI_DIR:-/tmp/ci-slurm}
trap '$CLUSTER stop || true' EXIT
$CLUSTER start || exit $?
eval "$($CLUSTER env)"

rm -rf "$WORK"
mkdir -p "$WORK"
started=$(date +%s)
say "submitting the quick preset to SLURM ($(sinfo --version))"
# What a user sets on a real cluster (see the profile's header); here: the local account and partition,
# and no GPU on this node, so the speed benchmark times the CPU backends with the node's CPUs.
SBATCH_ACCOUNT=ci SBATCH_PARTITION=ci SPEED_PARTITION=ci SPEED_GPUS=0 SPEED_CPUS=$(nproc) \
    "$PY" -m snakemake --profile workflow/profiles/slurm --configfile config/quick.yaml \
    --config results_dir="$WORK/slurm" --latency-wait 5 \
    --slurm-init-seconds-before-status-checks 5 --seconds-between-status-checks 5 \
    >"$WORK/slurm-run.log" 2>&1 || { tail -60 "$WORK/slurm-run.log" >&2; say "SLURM run FAILED (log: $WORK/slurm-run.log)"; exit 1; }
slurm_s=$(( $(date +%s) - started ))
# every job really went through SLURM: one accounting record per submitted job, all COMPLETED
sacct -X --parsable2 --noheader --format=JobIdRaw,JobName,Partition,Account,State,Elapsed --starttime "$(date -d @"$started" +%Y-%m-%dT%H:%M:%S)" \
    >"$WORK/sacct.txt"
say "SLURM run finished in ${slurm_s}s, $(wc -l <"$WORK/sacct.txt") jobs in accounting"

started=$(date +%s)
say "running the same preset locally"
"$PY" -m snakemake --cores "$(nproc)" --configfile config/quick.yaml --config results_dir="$WORK/local" \
    >"$WORK/local-run.log" 2>&1 || { tail -60 "$WORK/local-run.log" >&2; say "local run FAILED"; exit 1; }
say "local run finished in $(( $(date +%s) - started ))s"

"$PY" tests/slurm/compare_runs.py "$WORK/local" "$WORK/slurm" --sacct "$WORK/sacct.txt"
