# Shared by quickstart.sh and test.sh: create .venv if missing and install mmembed into it.
# Sourced, not run. Set MMEMBED_PYTHON to choose the interpreter that creates the venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${MMEMBED_PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo ">> creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
STAMP=.venv/.mmembed-install-stamp
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo ">> installing mmembed and its dependencies into .venv"
  python -m pip install -q --upgrade pip
  # torch first, pinned to the builds this project is tested with.
  python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  python -m pip install -q -e ".[dev]"
  touch "$STAMP"
fi
export PYTHONUNBUFFERED=1
