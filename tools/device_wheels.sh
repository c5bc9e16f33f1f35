#!/usr/bin/env bash
# Wheels that the GPU machine's image lacks (it has torch, torchvision, timm, huggingface_hub,
# regex, pyyaml, pillow, numpy, tqdm): downloaded here into .whl/ (in .gitignore), carried with the
# run, installed there into /tmp/site. Each version is constraints.txt's pin (no version is typed here).
#   bash tools/device_wheels.sh           # then run paper_check as docs/cluster.md says
#   bash tools/device_wheels.sh --print   # only print the name==version list it would download
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(open_clip_torch webdataset faiss-cpu braceexpand ftfy wcwidth)

pin() {  # pin NAME: constraints.txt's "name==version" line for NAME (names compared as pip does: case, - _ .)
  awk -v want="$1" '
    function canon(s) { s = tolower(s); gsub(/[-_.]+/, "-", s); return s }
    { sub(/#.*/, ""); gsub(/[ \t]/, "") }
    /==/ { split($0, p, "=="); if (canon(p[1]) == canon(want)) { print; found = 1; exit } }
    END { exit !found }' constraints.txt
}

specs=()
for pkg in "${PKGS[@]}"; do
  spec=$(pin "$pkg") || { echo "error: constraints.txt has no name==version line for $pkg" >&2; exit 2; }
  specs+=("$spec")
done
if [ "${1:-}" = "--print" ]; then
  printf '%s\n' "${specs[@]}"
  exit 0
fi
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for spec in "${specs[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl "$spec"
done
ls -la .whl
