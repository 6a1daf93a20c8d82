#!/usr/bin/env bash
# One command: set up, start the local model server and the platform (gateway on
# 127.0.0.1:$PORT, default 8080), deploy the functions in examples/stack.yaml, and stream a
# real answer from the local model through the `chat` function to the terminal.
# In a terminal the platform then keeps running until Ctrl-C; otherwise it is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8080}"
LLM_PORT="${LLM_PORT:-8000}"
STATE_DIR="${STREAMFAAS_STATE_DIR:-$PWD/.streamfaas/state}"
GATEWAY="http://127.0.0.1:${PORT}"
PROMPT="${PROMPT:-What are some calorie dense foods?}"

bash scripts/setup.sh
SF=.venv/bin/streamfaas
export STREAMFAAS_STATE_DIR="$STATE_DIR" OPENFAAS_URL="$GATEWAY" LLM_URL="http://127.0.0.1:${LLM_PORT}/v1"
mkdir -p "$STATE_DIR"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

wait_healthy() {  # URL PID LOG
  for _ in $(seq 300); do
    curl -s -o /dev/null "$1" && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; exit 1; }
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2; exit 1
}

for port in "$PORT" "$LLM_PORT"; do
  if curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then
    echo "something already listens on port $port; set PORT=... / LLM_PORT=... to use others" >&2
    exit 1
  fi
done

echo "starting the local model server (SmolLM2-135M-Instruct) on 127.0.0.1:$LLM_PORT"
"$SF" llm --port "$LLM_PORT" >"$STATE_DIR/llm.log" 2>&1 &
pids+=($!)
echo "starting the gateway on $GATEWAY (state: $STATE_DIR)"
"$SF" gateway --port "$PORT" >"$STATE_DIR/gateway.log" 2>&1 &
pids+=($!)
wait_healthy "http://127.0.0.1:$LLM_PORT/healthz" "${pids[0]}" "$STATE_DIR/llm.log"
wait_healthy "$GATEWAY/healthz" "${pids[1]}" "$STATE_DIR/gateway.log"

"$SF" up -f examples/stack.yaml
for _ in $(seq 300); do
  "$SF" describe chat | grep -q "Status: *Ready" && break
  sleep 0.1
done

echo
echo "\$ streamfaas invoke chat <<< \"$PROMPT\""
"$SF" invoke chat <<< "$PROMPT"
echo
echo "The same as raw Server-Sent Events:"
echo "  curl -N -H 'Content-Type: text/plain' -H 'Accept: text/event-stream' -d '$PROMPT' $GATEWAY/function/chat"

if [ -t 0 ] && [ -t 1 ]; then
  echo
  echo "streamfaas runs at $GATEWAY. Web chat: $GATEWAY/ui/chat (user admin, password in $STATE_DIR/auth/admin-password)."
  echo "Terminal chat: .venv/bin/streamfaas chat. Ctrl-C stops everything."
  wait "${pids[1]}"
fi
