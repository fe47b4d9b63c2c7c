# Sourced by scripts/test.sh and scripts/demo.sh: a virtual environment with the project installed.
# Needs Python 3.11 or newer as $PYTHON (default python3). Versions are pinned by constraints.txt (the tested ones).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$REPO/.venv}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "secure-monitor needs Python 3.11 or newer as \$PYTHON (found: $("$PYTHON" --version 2>&1))" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's and setuptools' chatter goes to a log, shown only when the install fails
install_log="$VENV/install.log"
if ! { "$VENV/bin/python" -m pip install --quiet --upgrade pip \
       && "$VENV/bin/python" -m pip install --quiet -c "$REPO/constraints.txt" -e "$REPO${PIP_EXTRAS:-}"; } \
       >"$install_log" 2>&1; then
    cat "$install_log" >&2
    echo "installing secure-monitor into $VENV failed (log above)" >&2
    exit 2
fi
export PATH="$VENV/bin:$PATH"
