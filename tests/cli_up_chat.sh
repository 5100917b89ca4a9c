#!/usr/bin/env bash
# cli_up_chat.sh: `omnipipe up` starts the four daemons (READY through its own notify socket) and
# prints `ready`; `omnipipe chat --script` holds a three-turn conversation through them; `omnipipe
# stats` reports the idle engine's load (all KV blocks free, prefix-cache hits); when a
# daemon dies `up` names it, stops the others and exits non-zero; nothing is left running.
#   tests/cli_up_chat.sh BIN_DIR MODEL_DIR
set -euo pipefail
BIN="${1:?usage: cli_up_chat.sh BIN_DIR MODEL_DIR}"
MODEL="${2:?usage: cli_up_chat.sh BIN_DIR MODEL_DIR}"
RT="$(mktemp -d /tmp/omt-up-XXXXXX)"
UP=""
cleanup() {
    [[ -n "$UP" ]] && kill -TERM "$UP" 2>/dev/null && wait "$UP" 2>/dev/null || true
    rm -rf "$RT"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- up.log" >&2; cat "$RT/up.log" >&2 || true; exit 1; }

"$BIN/omnipipe" up --model "$MODEL" --runtime-dir "$RT" --threads 1 --heartbeat-ms 100 > "$RT/up.log" 2>&1 &
UP=$!
for _ in $(seq 1 300); do grep -q '^omnipipe: ready' "$RT/up.log" && break; kill -0 "$UP" 2>/dev/null || fail "up exited"; sleep 0.1; done
grep -q '^omnipipe: ready' "$RT/up.log" || fail "no ready line"

printf 'Hello!\nName three colors.\nWhich one did you name first?\n' > "$RT/turns.txt"
"$BIN/omnipipe" chat --runtime-dir "$RT" --script "$RT/turns.txt" --max-tokens 6 --temperature 0 > "$RT/chat.txt" \
    || fail "chat failed: $(cat "$RT/chat.txt")"
[[ "$(grep -c '^> ' "$RT/chat.txt")" == 3 ]] || fail "expected three turns: $(cat "$RT/chat.txt")"
# each turn prints its prompt line and a reply line
[[ "$(wc -l < "$RT/chat.txt")" -ge 6 ]] || fail "replies missing: $(cat "$RT/chat.txt")"

# stats: one engine, idle again, every KV block free, the three turns' prompts looked up in the cache
# (the load is the engine's last heartbeat: ask again for a moment if it is not idle yet)
stats_ok() {
    "$BIN/omnipipe" stats --runtime-dir "$RT" > "$RT/stats.json" || return 1
    python3 - "$RT/stats.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["stage"] == "mm_prep" and s["counters"]["engines"] == 1, s
e = s["engines"][0]
assert e["engine_id"] == "engine-0" and e["running"] == 0, e
assert e["kv_blocks_total"] > 0 and e["kv_blocks_free"] == e["kv_blocks_total"], e
assert e["prefix_cache_queries"] > 0 and 0 < e["prefix_cache_hits"] <= e["prefix_cache_queries"], e
PY
}
ok=""
for _ in $(seq 1 10); do if stats_ok 2>"$RT/stats.err"; then ok=1; break; fi; sleep 0.2; done
[[ -n "$ok" ]] || fail "stats: $(cat "$RT/stats.json" "$RT/stats.err")"

# a daemon dies: up says which one and stops the rest
PIDS="$(grep -o 'engine-0=[0-9]*' "$RT/up.log" | cut -d= -f2)"
[[ -n "$PIDS" ]] || fail "no engine pid in the ready line"
ALL="$(grep -o '[a-z_0-9-]*=[0-9]*' "$RT/up.log" | cut -d= -f2 | tr '\n' ' ')"
kill -KILL "$PIDS"
set +e
wait "$UP"
RC=$?
set -e
UP=""
[[ $RC -ne 0 ]] || fail "up exited 0 after a daemon died"
grep -q 'engine-0 (pid [0-9]*) was killed by signal 9' "$RT/up.log" || fail "up did not name the dead daemon"
for p in $ALL; do
    if kill -0 "$p" 2>/dev/null; then fail "daemon pid $p still running after up exited"; fi
done
echo "cli_up_chat: passed"
