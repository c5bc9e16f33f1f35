#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and run a command inside it.
#   bash tools/venv.sh torchrun --nproc_per_node 2 launch/pretrain.py --config configs/demo.yaml
#   bash tools/venv.sh python -m pytest -q tests
# It installs the exact versions of constraints.txt (setup.py only gives ranges). The install is
# redone only when setup.py, constraints.txt or this script changes (a stamp file records their hash).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[venv] creating .venv with $($PY --version)" >&2
  $PY -m venv .venv
fi
stamp=.venv/.mcl_dist_installed
want=$(cat setup.py constraints.txt tools/venv.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[venv] installing mcl_dist and its dependencies (torch first, a few minutes once)" >&2
  pip=(.venv/bin/python -m pip install -q -c constraints.txt)
  .venv/bin/python -m pip install -q --upgrade pip >&2
  # torch + torchvision first and together: a separate torchvision install could pull another torch
  "${pip[@]}" torch torchvision >&2
  "${pip[@]}" -e ".[dev]" >&2
  # DeepSpeed (train.engine=deepspeed) needs torch at build time and no compiled ops
  DS_BUILD_OPS=0 "${pip[@]}" --no-build-isolation deepspeed >&2
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
exec "$@"
