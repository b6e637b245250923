#!/usr/bin/env bash
# Regenerate proto-tests/golden/ from real clients against a real tansu broker.
#
#   proto-tests/tools/capture.sh            # needs scripts/setup to have run
#
# tansu listens on 127.0.0.1:$BROKER_PORT but advertises the relay's port, so
# every client connection (bootstrap and per-broker) goes through capture.py.
# Env: BROKER_PORT (default 39092), RELAY_PORT (39093), KEEP_RAW=DIR to keep the
# full recording, CAPTURE_DATE=YYYY-MM-DD for the README. Afterwards,
# `cargo test --test proto golden::` checks every frame (proto-tests/golden.rs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="$ROOT/proto-tests/tools"
GOLDEN="$ROOT/proto-tests/golden"
PY="$ROOT/.cache/venv/bin/python"
BROKER_PORT="${BROKER_PORT:-39092}"
RELAY_PORT="${RELAY_PORT:-39093}"

[ -x "$PY" ] && [ -x "$ROOT/.cache/bin/tansu" ] || { echo "capture.sh: run scripts/setup first" >&2; exit 1; }

RAW="${KEEP_RAW:-$(mktemp -d)}"
mkdir -p "$RAW"
tansu_pid="" relay_pid=""
cleanup() {
    [ -n "$relay_pid" ] && { kill -TERM "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; }
    [ -n "$tansu_pid" ] && "$ROOT/scripts/tansu" stop "$tansu_pid" || true
    [ -n "${KEEP_RAW:-}" ] || rm -rf "$RAW"
}
trap cleanup EXIT

tansu_pid="$("$ROOT/scripts/tansu" start --port "$BROKER_PORT" --advertise "127.0.0.1:$RELAY_PORT" \
    --log "$RAW/tansu.log" --pidfile "$RAW/tansu.pid")"

"$PY" "$TOOLS/capture.py" relay --listen "127.0.0.1:$RELAY_PORT" \
    --upstream "127.0.0.1:$BROKER_PORT" --out "$RAW" 2>"$RAW/relay.log" &
relay_pid=$!
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$RELAY_PORT") 2>/dev/null && break
    sleep 0.05
done

timeout 120 "$PY" "$TOOLS/client_librdkafka.py" "127.0.0.1:$RELAY_PORT"
timeout 120 "$PY" "$TOOLS/client_kafkapython.py" "127.0.0.1:$RELAY_PORT"
sleep 0.5

kill -TERM "$relay_pid"; wait "$relay_pid" || true; relay_pid=""
cat "$RAW/relay.log" >&2

"$PY" "$TOOLS/capture.py" select --raw "$RAW" --out "$GOLDEN" ${CAPTURE_DATE:+--date "$CAPTURE_DATE"}
echo "capture.sh: $(ls "$GOLDEN"/*.bin | wc -l) frames, $(cat "$GOLDEN"/*.bin | wc -c) bytes in $GOLDEN" >&2

echo "capture.sh: now run: cargo test --test proto golden::" >&2
