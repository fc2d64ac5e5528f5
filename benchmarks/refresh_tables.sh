#!/usr/bin/env bash
# Re-measure this host's shipped latency tables and refit their predictors, alone on the machine.
#
#   bash benchmarks/refresh_tables.sh [N_MBV2] [N_OPENVINO] [N_FBNET]
#
# Run it with nothing else on the machine: a neighbour that computes slows L3-bound models by up to
# 1.7x (autocomp/measure/quiet.py). Measurements run pinned to core 0 at real-time priority (root) when
# allowed, so the shell, the progress bar and the exports of the same campaign don't preempt them.
# Tables go where the search looks them up (predictors/<device>/<fingerprint>/, or
# predictors/spaces/<space>/... for fbnet-224); the load average is logged before and after each step.
set -euo pipefail
cd "$(dirname "$0")/.."
N_MBV2=${1:-150}; N_OV=${2:-150}; N_FB=${3:-120}
LOG=${LOG:-benchmarks/results/refresh_tables.log}
RT="taskset -c 0"
if chrt -f 10 true 2>/dev/null; then RT="chrt -f 10 taskset -c 0"; fi
say() { echo "$(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg): $*" | tee -a "$LOG"; }

say "cpu-ort mnist-mbv2 campaign, n=$N_MBV2"
$RT autocomp measure --device cpu-ort --n "$N_MBV2" --seed 0 --no-progress --json >> "$LOG"
say "cpu-openvino mnist-mbv2 campaign, n=$N_OV"
$RT autocomp measure --device cpu-openvino --n "$N_OV" --seed 0 --no-progress --json >> "$LOG"
say "cpu-ort fbnet-224 campaign, n=$N_FB"
$RT autocomp measure --space fbnet-224 --device cpu-ort --n "$N_FB" --seed 0 --no-progress --json >> "$LOG"
say "done"
