#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs the gates and pytest.
#   Python packages into .venv (and sslyze, which pins its own cryptography, into .venv-sslyze);
#   MariaDB, Chromium, Prometheus, logrotate, systemd-analyze and systemd-journal-remote from Debian packages when missing (the tests start their own private server).
# Extra arguments go to pytest, e.g. scripts/test.sh -k tokens
set -euo pipefail
PIP_EXTRAS="[test]"
source "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh"
cd "$REPO"

need_apt=()
command -v mariadbd >/dev/null 2>&1 || need_apt+=(mariadb-server)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)  # the deploy units are verified
command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || need_apt+=(logrotate)
# a real Prometheus scrapes the collector's exporter (prometheus and promtool)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# real journal files for the SSH-from-journald tests (journalctl reads them)
[ -x /lib/systemd/systemd-journal-remote ] || [ -x /usr/lib/systemd/systemd-journal-remote ] || need_apt+=(systemd-journal-remote)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test.sh: missing ${need_apt[*]}; install them (apt-get install ${need_apt[*]}) or run as root" >&2
        exit 2
    fi
    echo "installing ${need_apt[*]} from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

SSLYZE_VENV="$REPO/.venv-sslyze"
if [ ! -x "$SSLYZE_VENV/bin/python" ] || ! "$SSLYZE_VENV/bin/python" -c 'import sslyze' 2>/dev/null; then
    "$PYTHON" -m venv "$SSLYZE_VENV"
    "$SSLYZE_VENV/bin/python" -m pip install --quiet --upgrade pip
    "$SSLYZE_VENV/bin/python" -m pip install --quiet sslyze
fi
export SSLYZE_PYTHON="$SSLYZE_VENV/bin/python"

echo "== ruff (with the bandit S rules)"
ruff check .
echo "== mypy --strict on the packages and the tests"
mypy
echo "== pytest (with the coverage figure of the packages: reported, not a gate)"
exec pytest --cov --cov-report=term "$@"
