# Sourced by the scripts here: make .venv (Python >= 3.11) and install Hearth into it, once per
# change of pyproject.toml or requirements.lock.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Hearth needs Python >= 3.11" >&2; exit 1; }
  "$PY" -m venv .venv
fi
want="$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)-${HEARTH_EXTRAS:-none}"
if [ "$(cat .venv/.hearth-installed 2>/dev/null)" != "$want" ]; then
  if [ -n "${HEARTH_EXTRAS:-}" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -e ".[${HEARTH_EXTRAS}]"
  else
    .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -e .
  fi
  echo "$want" > .venv/.hearth-installed
fi
