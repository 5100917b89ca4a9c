#!/usr/bin/env bash
# cli_tcp.sh: the pipeline with every hop on tcp:// (loopback) instead of ipc://. The endpoints come
# from OMNIPIPE_ENDPOINT_* in the environment, which `omnipipe up` passes to the daemons and which
# `omnipipe chat` reads too; a two-turn conversation must complete through them.
#   tests/cli_tcp.sh BIN_DIR MODEL_DIR
set -euo pipefail
BIN="${1:?usage: cli_tcp.sh BIN_DIR MODEL_DIR}"
MODEL="${2:?usage: cli_tcp.sh BIN_DIR MODEL_DIR}"
RT="$(mktemp -d /tmp/omt-tcp-XXXXXX)"
UP=""
cleanup() {
    [[ -n "$UP" ]] && kill -TERM "$UP" 2>/dev/null && wait "$UP" 2>/dev/null || true
    rm -rf "$RT"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- up.log" >&2; cat "$RT/up.log" >&2 || true; exit 1; }

# five free loopback ports
read -r P1 P2 P3 P4 P5 < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
for s in ss: s.close()')
export OMNIPIPE_ENDPOINT_TOKENIZER="tcp://127.0.0.1:$P1"
export OMNIPIPE_ENDPOINT_MM_PREP="tcp://127.0.0.1:$P2"
export OMNIPIPE_ENDPOINT_ENGINES="tcp://127.0.0.1:$P3"
export OMNIPIPE_ENDPOINT_DECODER_IN="tcp://127.0.0.1:$P4"
export OMNIPIPE_ENDPOINT_DECODER="tcp://127.0.0.1:$P5"

"$BIN/omnipipe" up --model "$MODEL" --runtime-dir "$RT" --threads 1 --heartbeat-ms 100 > "$RT/up.log" 2>&1 &
UP=$!
for _ in $(seq 1 300); do grep -q '^omnipipe: ready' "$RT/up.log" && break; kill -0 "$UP" 2>/dev/null || fail "up exited"; sleep 0.1; done
grep -q '^omnipipe: ready' "$RT/up.log" || fail "no ready line"
# nothing may have been bound as ipc:// in the runtime dir
if ls "$RT"/*.sock >/dev/null 2>&1; then fail "ipc sockets were created: $(ls "$RT")"; fi

printf 'Hello over TCP!\nAnd again.\n' > "$RT/turns.txt"
"$BIN/omnipipe" chat --runtime-dir "$RT/nonexistent" --script "$RT/turns.txt" --max-tokens 4 --temperature 0 \
    > "$RT/chat.txt" || fail "chat failed: $(cat "$RT/chat.txt")"
[[ "$(grep -c '^> ' "$RT/chat.txt")" == 2 ]] || fail "expected two turns: $(cat "$RT/chat.txt")"
[[ "$(wc -l < "$RT/chat.txt")" -ge 4 ]] || fail "replies missing: $(cat "$RT/chat.txt")"
echo "cli_tcp: passed"
