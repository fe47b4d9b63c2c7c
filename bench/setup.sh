#!/usr/bin/env bash
# Installs what the benchmarks need beyond the project itself (the test suite needs none of it):
#   - Glances (PyPI) into its own virtual environment, .venv-bench-glances, so its pins stay apart;
#   - node_exporter from the Debian package prometheus-node-exporter (binary only: its service is
#     stopped and disabled, the benchmark starts its own copy on a loopback port);
#   - py-spy into .venv, to profile a benchmark that misses its goal.
# Then: .venv/bin/python -m bench      (see bench/README.md)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/setup-env.sh"
cd "$REPO"

GLANCES_VENV="$REPO/.venv-bench-glances"
if [ ! -x "$GLANCES_VENV/bin/glances" ]; then
    "$PYTHON" -m venv "$GLANCES_VENV"
    "$GLANCES_VENV/bin/python" -m pip install --quiet --upgrade pip
    # Glances' XML-RPC server needs only psutil and defusedxml; no web UI extras.
    "$GLANCES_VENV/bin/python" -m pip install --quiet glances
fi
"$GLANCES_VENV/bin/glances" --version

if ! command -v prometheus-node-exporter >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench/setup.sh: install prometheus-node-exporter (apt-get install prometheus-node-exporter) or run as root" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus-node-exporter >/dev/null
fi
# The package starts a system service on :9100; the benchmark runs its own instance, so stop that one
# (it would otherwise share the CPU with what we measure). Where there is no systemd, nothing runs.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus-node-exporter 2>/dev/null; then
    systemctl stop prometheus-node-exporter || true
    systemctl disable prometheus-node-exporter >/dev/null 2>&1 || true
fi
prometheus-node-exporter --version 2>&1 | head -n 1

"$VENV/bin/python" -m pip install --quiet py-spy
echo "bench/setup.sh: ready; run: $VENV/bin/python -m bench"
