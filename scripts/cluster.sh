#!/usr/bin/env bash
# The scale-out layout on one machine, with real processes: a 3-node NATS JetStream cluster
# (streams and buckets with 3 replicas), two `tipml serve` replicas (consumers off, the
# production layout) and two `tipml consume` processes — members 0/2 and 1/2 of the keyed
# signals' 2 partitions (ADR 0019: each the only writer of its users), sharing the unkeyed
# signals and the feedback; both archive, as one archiver group writing one offline log
# ($TIPML_CLUSTER_DIR/offline, TIPML_ARCHIVE_DIR: a path every consume host mounts); the
# first runs the bandit learner.
#
#   bash scripts/cluster.sh                 # after bash scripts/bootstrap.sh; Ctrl-C stops it
#   TIPML_CLUSTER_PORTS="8001 8002" TIPML_CLUSTER_DIR=.tipml/cluster TIPML_API_TOKENS=… \
#     bash scripts/cluster.sh
#
# Each replica starts its own embedded model (llama-server, one thread), as `tipml serve`
# does on embedded defaults; point TIPML_GATEWAY_CONFIG at a shared LLM server instead on real
# machines. Nothing is left running when the script ends (it stops every process it started).
set -euo pipefail
cd "$(dirname "$0")/.."
export LITELLM_LOCAL_MODEL_COST_MAP=True
PY=.venv/bin/python
ROOT=${TIPML_CLUSTER_DIR:-.tipml/cluster}
PORTS=${TIPML_CLUSTER_PORTS:-"8001 8002"}
export TIPML_API_TOKENS=${TIPML_API_TOKENS:-cluster-dev-token-0123456789}
export TIPML_STREAM_REPLICAS=3 TIPML_LOG_LEVEL=${TIPML_LOG_LEVEL:-WARNING}
mkdir -p "$ROOT"
export TIPML_ARCHIVE_DIR
TIPML_ARCHIVE_DIR=$(cd "$ROOT" && pwd)/offline
rm -f "$ROOT/nats.urls"

pids=()
stop() {
  trap - EXIT INT TERM
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop EXIT
trap 'exit 130' INT TERM

"$PY" -m tipml.testing.cluster "$ROOT/nats" >"$ROOT/nats.urls" 2>"$ROOT/nats.err" &
pids+=($!)
for _ in $(seq 300); do
  [ -s "$ROOT/nats.urls" ] && break
  sleep 0.1
done
[ -s "$ROOT/nats.urls" ] || { echo "the NATS cluster did not start: $ROOT/nats.err" >&2; exit 1; }
export TIPML_NATS_URL
TIPML_NATS_URL=$(head -1 "$ROOT/nats.urls")

# keyed signals in 2 partitions, one per consume process: each the only writer of its users
TIPML_SIGNAL_PARTITIONS=2 TIPML_DATA_DIR="$ROOT/consume-1" "$PY" -m tipml consume --member 0/2 \
  --only signals,feedback,archiver,learner >"$ROOT/consume-1.log" 2>&1 &
pids+=($!)
TIPML_SIGNAL_PARTITIONS=2 TIPML_DATA_DIR="$ROOT/consume-2" "$PY" -m tipml consume --member 1/2 \
  --only signals,feedback,archiver >"$ROOT/consume-2.log" 2>&1 &
pids+=($!)
for port in $PORTS; do
  TIPML_DATA_DIR="$ROOT/serve-$port" TIPML_CONSUMERS=off "$PY" -m tipml serve --port "$port" \
    >"$ROOT/serve-$port.log" 2>&1 &
  pids+=($!)
done

for port in $PORTS; do
  for _ in $(seq 600); do
    if curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.2
  done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || {
    echo "replica on :$port not ready: $ROOT/serve-$port.log" >&2
    exit 1
  }
done

echo "NATS cluster (3 nodes): $TIPML_NATS_URL"
for port in $PORTS; do echo "tipml serve replica:     http://127.0.0.1:$port"; done
echo "tipml consume:           2 processes, members 0/2 and 1/2 (logs in $ROOT/consume-*.log)"
echo "offline log:             $TIPML_ARCHIVE_DIR (both processes archive)"
echo "ready — Ctrl-C stops everything"
wait "${pids[@]}"
