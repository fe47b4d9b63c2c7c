#!/usr/bin/env bash
# The demo on localhost: PKI bootstrap, one agent, a collector service polling every second for half a
# minute (DEMO_SECONDS), the runbook's --once check beside it, plots and the dashboard rendered.
# Everything lands in ./demo-out (removed and made anew on every run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh"
cd "$REPO"

OUT="$REPO/demo-out"
rm -rf "$OUT"
mkdir -p "$OUT"
PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

echo "== 1. PKI bootstrap (CA, agent and collector certificates, HMAC key, CRL, configs)"
python pki/make_certs.py --out "$OUT/pki" --port "$PORT"

echo "== 2. agent on 127.0.0.1:$PORT (mutual TLS, allowlist, rate limit, signed single-use tokens)"
secure-agent --config "$OUT/pki/agent-localhost.json" --check
secure-agent --config "$OUT/pki/agent-localhost.json" >"$OUT/agent.log" 2>&1 &
AGENT_PID=$!
trap 'kill -TERM "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true' EXIT

echo "== 3. collector: the agent answers"
ready=0
for _ in $(seq 1 50); do  # the agent binds within a second or two; give up after ten
    if secure-collector --config "$OUT/pki/collector.json" --once >/dev/null 2>&1; then ready=1; break; fi
    if ! kill -0 "$AGENT_PID" 2>/dev/null; then break; fi
    sleep 0.2
done
if [ "$ready" -ne 1 ]; then
    echo "demo: the agent did not answer; its log:" >&2
    cat "$OUT/agent.log" >&2
    exit 1
fi

echo "== 4. collector service: a poll every second for ${DEMO_SECONDS:=30} s (the runbook's --once check beside it)"
python - "$OUT/pki/collector.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["poll_interval"] = 1
json.dump(config, open(path, "w"), indent=2)
PY
secure-collector --config "$OUT/pki/collector.json" >"$OUT/collector.log" 2>&1 &
COLLECTOR_PID=$!
trap 'kill -TERM "$COLLECTOR_PID" "$AGENT_PID" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
sleep $((DEMO_SECONDS / 2))
secure-collector --config "$OUT/pki/collector.json" --once  # beside the service: polls and prints, stores nothing
sleep $((DEMO_SECONDS - DEMO_SECONDS / 2))
kill -TERM "$COLLECTOR_PID"
wait "$COLLECTOR_PID" || { echo "demo: the collector failed; its log:" >&2; cat "$OUT/collector.log" >&2; exit 1; }
trap 'kill -TERM "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true' EXIT
echo "stored $(wc -l <"$OUT/pki/data/metrics_data.json") samples"

echo "== 5. plots and dashboard"
secure-viz --config "$OUT/pki/collector.json" --plot all --hours 1 --output-dir "$OUT/dashboard"

echo "== 6. audit log"
kill -TERM "$AGENT_PID"
wait "$AGENT_PID" || true
trap - EXIT
secure-audit verify "$OUT/pki/data/audit-localhost.log"
# the collector's central copy of it (copied every sweep): the host must hold every record of it
secure-audit verify "$OUT/pki/data/audit-localhost.log" --collector-config "$OUT/pki/collector.json" --agent localhost

echo
echo "Stored samples:  $OUT/pki/data/metrics_data.json"
echo "Dashboard:       $OUT/dashboard/index.html"
echo "Audit log:       $OUT/pki/data/audit-localhost.log"
echo "Central copy:    $OUT/pki/data/audit/localhost.log"
