#!/usr/bin/env bash
# Show that setup.py's ranges hold at both ends: for the OLDEST supported versions (setup.py's floors,
# exactly) and the NEWEST torch on the package index, make a venv with that torch (+ its torchvision)
# already installed, as a user's cluster would have it, then run a plain `pip install -e .` (no
# constraints) and check that pip kept that torch, then run the demo to its report and a core test
# subset. One verdict line per venv; exit status 0 only if every venv passed.
#   bash tools/check_torch_range.sh DIR               # both ends (venvs, logs and runs under DIR)
#   bash tools/check_torch_range.sh DIR oldest        # one end: oldest | newest
# Slow: several GB of CUDA wheels per venv, a CPU demo and the tests in each (2-5 min per venv on two
# cores once the wheels are in pip's cache). Where /etc/xdg/pip caps torch (this kind of machine), `rm -r /etc/xdg/pip` first.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: bash tools/check_torch_range.sh DIR [oldest|newest ...]}
shift
ENDS=("${@:-oldest newest}")
ENDS=(${ENDS[*]})
PY=${PYTHON:-python3}
TESTS=(tests/test_config.py tests/test_loss.py tests/test_sampler.py tests/test_kmeans.py tests/test_labels.py
       tests/test_streaming.py)
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

floors() {
  # setup.py's ">=" floors as exact pins: torch==2.4.0 torchvision==0.19.0 ...
  $PY - <<'EOF'
import ast
tree = ast.parse(open("setup.py").read())
reqs = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "REQUIRES")
print(" ".join(r.value.replace(">=", "==") for r in reqs.elts if ">=" in r.value))
EOF
}

newest_torch() {
  $PY -m pip index versions torch 2>/dev/null | sed -n 's/^torch (\(.*\))$/\1/p'
}

check() {  # check NAME PACKAGES...: exit status 0 when every step passed; the step that failed on stderr
  local name=$1; shift
  local venv=$DIR/$name log=$DIR/$name.log py=$DIR/$name/bin/python
  rm -rf "$venv" "$DIR/$name-run"
  $PY -m venv "$venv" >>"$log" 2>&1 && "$py" -m pip install -q --upgrade pip >>"$log" 2>&1 || { echo "venv" >&2; return 1; }
  # the user's torch: torch and torchvision together, so pip pairs them
  "$py" -m pip install "$@" >>"$log" 2>&1 || { echo "pip install $*" >&2; return 1; }
  local before after
  before=$("$py" -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|torchvision)==' | tr '\n' ' ')
  # faiss-cpu (the faiss extra): test_kmeans compares the faiss backend with ours
  "$py" -m pip install -e ".[faiss]" pytest pytest-xdist >>"$log" 2>&1 || { echo "pip install -e ." >&2; return 1; }
  after=$("$py" -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|torchvision)==' | tr '\n' ' ')
  echo "[$name] before: $before after: $after" >>"$log"
  [ "$before" = "$after" ] || { echo "pip install -e . changed torch: $before-> $after" >&2; return 1; }
  "$py" -m pip check >>"$log" 2>&1 || { echo "pip check" >&2; return 1; }
  "$py" -c "import torch, torchvision, open_clip, webdataset; torchvision.ops.nms" >>"$log" 2>&1 \
    || { echo "import torch/torchvision/open_clip" >&2; return 1; }
  PATH=$venv/bin:$PATH torchrun --standalone --nproc_per_node 2 launch/pretrain.py --config configs/demo.yaml \
    --run-dir "$DIR/$name-run" >>"$log" 2>&1 || { echo "demo" >&2; return 1; }
  [ -s "$DIR/$name-run/report.md" ] || { echo "demo wrote no report.md" >&2; return 1; }
  # a time limit: a rank that hangs in a collective must end as a FAIL line, not a stuck script
  PATH=$venv/bin:$PATH timeout 900 "$py" -m pytest -q -n 0 -p no:cacheprovider "${TESTS[@]}" >>"$log" 2>&1 \
    || { echo "tests (${TESTS[*]}; exit status $?)" >&2; return 1; }
  return 0
}

status=0
for end in "${ENDS[@]}"; do
  case $end in
    oldest) pkgs=($(floors)) ;;
    newest) v=$(newest_torch); [ -n "$v" ] || { echo "error: pip index versions torch printed nothing" >&2; exit 2; }
            pkgs=("torch==$v" torchvision) ;;
    *) echo "error: unknown end '$end' (oldest | newest)" >&2; exit 2 ;;
  esac
  echo "[$end] installing ${pkgs[*]} (log: $DIR/$end.log)" >&2
  start=$SECONDS
  if why=$(check "$end" "${pkgs[@]}" 2>&1); then verdict=PASS; else verdict="FAIL at $why"; status=1; fi
  got=$("$DIR/$end/bin/python" -m pip list --format=freeze 2>/dev/null \
        | grep -iE '^(torch|torchvision|open.clip.torch|webdataset|timm|numpy)==' | tr '\n' ' ')
  tests=$(grep -E '^[0-9]+ passed|passed|failed' "$DIR/$end.log" 2>/dev/null | tail -1)
  echo "$end: $verdict | $got| tests: ${tests:-not run} | $((SECONDS - start)) s"
done
exit $status
