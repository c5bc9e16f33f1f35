#!/usr/bin/env bash
# Wheels that the GPU machine's image lacks (it has torch, torchvision, timm, huggingface_hub,
# regex, pyyaml, pillow, numpy, tqdm): downloaded here into .whl/ (in .gitignore), carried with the run, installed there into /tmp/site. Versions = setup.py's.
#   bash tools/device_wheels.sh         # then run paper_check as docs/cluster.md says
set -euo pipefail
cd "$(dirname "$0")/.."
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for pkg in open_clip_torch==3.3.0 webdataset==1.0.2 faiss-cpu==1.15.1 braceexpand==0.1.7 ftfy==6.3.1 wcwidth==0.9.4; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl "$pkg"
done
ls -la .whl
