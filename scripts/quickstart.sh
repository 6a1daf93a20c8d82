#!/usr/bin/env bash
# One command: set up, start the platform on 127.0.0.1:$PORT (default 8080), deploy the
# example functions from examples/stack.yaml, and stream an answer to the terminal.
# In a terminal the platform then keeps running until Ctrl-C; otherwise it is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8080}"
STATE_DIR="${STREAMFAAS_STATE_DIR:-$PWD/.streamfaas/state}"
GATEWAY="http://127.0.0.1:${PORT}"

bash scripts/setup.sh
SF=.venv/bin/streamfaas
export STREAMFAAS_STATE_DIR="$STATE_DIR" OPENFAAS_URL="$GATEWAY"
mkdir -p "$STATE_DIR"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

if curl -s -o /dev/null "$GATEWAY/healthz" 2>/dev/null; then
  echo "something already listens on port $PORT; set PORT=... to use another" >&2
  exit 1
fi
"$SF" gateway --port "$PORT" >"$STATE_DIR/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -s -o /dev/null "$GATEWAY/healthz" && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$STATE_DIR/gateway.log" >&2; exit 1; }
  sleep 0.1
done

"$SF" up -f examples/stack.yaml --gateway "$GATEWAY"
for _ in $(seq 100); do
  "$SF" describe stream | grep -q "Status: *Ready" && break
  sleep 0.1
done

echo
echo "\$ curl -N -H 'Content-Type: text/plain' -H 'Accept: text/event-stream' -d 'What are some calorie dense foods?' $GATEWAY/function/stream"
curl -sS -N -i -H "Content-Type: text/plain" -H "Accept: text/event-stream" \
  -d "What are some calorie dense foods?" "$GATEWAY/function/stream"
echo

if [ -t 0 ] && [ -t 1 ]; then
  echo "streamfaas runs at $GATEWAY (state: $STATE_DIR). Try: .venv/bin/streamfaas list. Ctrl-C stops it."
  wait "${pids[0]}"
fi
