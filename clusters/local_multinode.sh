#!/usr/bin/env bash
# A two-node Ray cluster on this machine, for trying cluster runs without a cluster:
#   head   : schedules trials, holds no device
#   worker : holds the device resource device:cpu-ort, so every latency measurement runs there
#
#   clusters/local_multinode.sh start     # start head + worker (background)
#   clusters/local_multinode.sh submit [more `autocomp search` options]   # a small search with Ray Jobs
#   clusters/local_multinode.sh stop      # stop the two nodes this script started
set -euo pipefail

PORT=${RAY_PORT:-6390}                   # GCS port of the head
DASH=${RAY_DASHBOARD_PORT:-8265}         # dashboard / Ray Jobs API (loopback only)
STATE=${AUTOCOMP_CLUSTER_DIR:-/tmp/autocomp-cluster}
DEVICE=${AUTOCOMP_DEVICE:-cpu-ort}
# Dashboard and Jobs API listen on 127.0.0.1 only. Ray resolves --node-ip-address 127.0.0.1 to this
# machine's address for its internal services, so keep its ports firewalled, or leave token auth on
# (drop the next line) when the machine is reachable from a network.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}

start() {
  mkdir -p "$STATE"
  # --block keeps each node in the foreground of its own process group, so `stop` ends exactly these
  # nodes (a bare `ray stop` would stop every Ray process on the machine).
  setsid ray start --head --block --node-ip-address 127.0.0.1 --port "$PORT" \
      --dashboard-host 127.0.0.1 --dashboard-port "$DASH" --resources '{}' \
      --disable-usage-stats >"$STATE/head.log" 2>&1 &
  echo $! >"$STATE/head.pid"
  until ray status --address "127.0.0.1:$PORT" >/dev/null 2>&1; do sleep 1; done
  # Its own temp dir: two nodes on one machine must not share runtime-env files (working_dir).
  setsid ray start --block --address "127.0.0.1:$PORT" --node-ip-address 127.0.0.1 \
      --temp-dir "$STATE/ray-worker" --resources "{\"device:$DEVICE\": 1}" --disable-usage-stats \
      >"$STATE/worker.log" 2>&1 &
  echo $! >"$STATE/worker.pid"
  until [[ $(ray status --address "127.0.0.1:$PORT" 2>/dev/null | grep -c ' node_') -ge 2 ]]; do sleep 1; done
  ray status --address "127.0.0.1:$PORT"
  echo "dashboard: http://127.0.0.1:$DASH"
}

submit() {
  # The job's working directory is a copy of this checkout on the head; write the run where it stays.
  ray job submit --address "http://127.0.0.1:$DASH" --working-dir . \
      --runtime-env-json '{"excludes": ["reports/", ".git/", "*.onnx"], "env_vars": {"RAY_AUTH_MODE": "disabled"}}' \
      -- autocomp search --budget 10ms --trials "${TRIALS:-8}" --controller nsga2 --device "$DEVICE" \
         --out "${OUT:-$STATE/runs/$(date +%Y%m%d-%H%M%S)}" "$@"
}

stop() {
  for node in worker head; do
    if [[ -f "$STATE/$node.pid" ]]; then
      pid=$(cat "$STATE/$node.pid")
      kill -TERM -- "-$pid" 2>/dev/null || true   # the node's own process group
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      rm -f "$STATE/$node.pid"
    fi
  done
  # `ray start --head` records its address for later `ray.init()` calls; forget it if it is ours.
  f=/tmp/ray/ray_current_cluster
  if [[ -f $f && $(cat "$f") == *":$PORT" ]]; then rm -f "$f"; fi
}

case "${1:-}" in
  start) start ;;
  submit) shift; submit "$@" ;;
  stop) stop ;;
  *) echo "usage: $0 start|submit|stop" >&2; exit 2 ;;
esac
