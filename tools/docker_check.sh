#!/usr/bin/env bash
# Build docker/Dockerfile and run the demo inside the image, without a Docker engine (as root):
#   sudo apt-get install -y podman buildah debootstrap
#   sudo bash tools/docker_check.sh    # ~6 min the first time here (~7 GB of CUDA wheels), ~1 min cached
# The CUDA base image cannot be pulled everywhere, so BASE_IMAGE is a minimal Debian bookworm made
# here with debootstrap (python3, venv, pip, g++) and imported with podman; the Dockerfile is used
# unchanged otherwise. Steps: the base (reused when present), `podman build --isolation=chroot`,
# the demo through the image's entry point (2 CPU processes) to its report.md, the installed
# versions (pip freeze in the image) against constraints.txt, and the CUDA libraries that torch and
# faiss-gpu load in one process (CPU only: no driver is needed to load them). Prints a verdict;
# exits 1 on any failure. Settings (environment):
#   MCL_DOCKER_DIR  work folder for the Debian root file system and the logs  (/var/tmp/mcl_docker)
#   MCL_DOCKER_TAG  the image built                                           (localhost/mcl_dist:check)
#   MCL_BASE_TAG    the Debian base image                                     (localhost/mcl-base:bookworm)
#   DEBIAN_MIRROR   where debootstrap downloads from                          (http://deb.debian.org/debian)
#   MCL_DOCKER_FRESH=1  rebuild every layer (podman build --no-cache; pip's cache mount stays)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${MCL_DOCKER_DIR:-/var/tmp/mcl_docker}
tag=${MCL_DOCKER_TAG:-localhost/mcl_dist:check}
base=${MCL_BASE_TAG:-localhost/mcl-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$work"
fail() { echo "error: tools/docker_check.sh: $*" >&2; echo "VERDICT: FAIL ($*)"; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (podman build and buildah run need it here)"
for tool in podman buildah debootstrap python3; do
  command -v "$tool" >/dev/null || fail "$tool not found (apt-get install -y podman buildah debootstrap)"
done
[ -f constraints.txt ] || fail "constraints.txt missing at the repository root"
stamp() { date -u +%s; }
t0=$(stamp)

# 1. the base: Debian with what the Dockerfile's apt-get line installs, so that line only re-checks.
# It trusts the certificate authorities this host trusts beyond Debian's, and pip uses the system
# bundle (pip.conf), so apt and pip inside the build pass the same TLS proxy the host passes.
if podman image exists "$base"; then
  echo "[docker_check] base $base: reused"
else
  root=$work/rootfs
  if [ ! -f "$root/.debootstrap_done" ]; then
    echo "[docker_check] base $base: debootstrap bookworm into $root"
    rm -rf "$root"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python3-dev,g++,ca-certificates \
      bookworm "$root" "$mirror" > "$work/debootstrap.log" 2>&1 || fail "debootstrap failed, see $work/debootstrap.log"
    rm -f "$root"/var/cache/apt/archives/*.deb
    touch "$root/.debootstrap_done"
  fi
  python3 - /etc/ssl/certs/ca-certificates.crt "$root" <<'EOF' || fail "could not copy this host's certificate authorities into $root"
import os, re, sys
pem = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
host, root = sys.argv[1], sys.argv[2]
theirs = set(pem.findall(open(os.path.join(root, "etc/ssl/certs/ca-certificates.crt")).read()))
extra = [c for c in pem.findall(open(host).read()) if c not in theirs]
for i, cert in enumerate(extra):
    with open(os.path.join(root, f"usr/local/share/ca-certificates/host-{i}.crt"), "w") as f:
        f.write(cert + "\n")
print(f"[docker_check] base: {len(extra)} certificate authorities of this host added")
EOF
  chroot "$root" update-ca-certificates > /dev/null || fail "update-ca-certificates failed in $root"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
  tar -C "$root" --exclude=./.debootstrap_done -c . | podman import - "$base" > /dev/null \
    || fail "podman import of $root failed"
fi
t1=$(stamp)

# 2. the image: docker/Dockerfile as it is, but for BASE_IMAGE (pip's cache is the file's cache mount)
echo "[docker_check] podman build -> $tag (log: $work/build.log)"
fresh=(); [ "${MCL_DOCKER_FRESH:-0}" = 1 ] && fresh=(--no-cache)
if ! podman build --isolation=chroot --pull=never "${fresh[@]}" --build-arg "BASE_IMAGE=$base" \
    -f docker/Dockerfile -t "$tag" . > "$work/build.log" 2>&1; then
  tail -n 30 "$work/build.log" >&2
  fail "podman build failed, see $work/build.log"
fi
t2=$(stamp)
size=$(podman image inspect --format '{{.Size}}' "$tag")

# 3. the demo inside the image, through its entry point: torchrun --standalone --nproc_per_node 2
# a hostname that resolves inside, as Docker gives a container (torchrun's rendezvous binds to it)
ctr=$(buildah from --pull-never --add-host mcl-check:127.0.0.1 "$tag")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
inside() { buildah run --isolation chroot --workingdir /opt/mcl_dist "$ctr" -- "$@"; }
echo "[docker_check] demo in the image (log: $work/demo.log)"
if ! buildah run --isolation chroot --hostname mcl-check --workingdir /opt/mcl_dist --env NPROC_PER_NODE=2 "$ctr" -- \
    mcl-entrypoint --config configs/demo.yaml --run-dir /runs/demo > "$work/demo.log" 2>&1; then
  tail -n 30 "$work/demo.log" >&2
  fail "the demo failed inside the image, see $work/demo.log"
fi
inside cat /runs/demo/report.md > "$work/report.md" 2>/dev/null && [ -s "$work/report.md" ] \
  || fail "the demo finished without /runs/demo/report.md"
echo "[docker_check] demo report: $work/report.md ($(wc -l < "$work/report.md") lines)"
t3=$(stamp)

# 4. versions: every package constraints.txt pins that the image has must be at that version, the
# ones the Dockerfile installs must be there, and faiss-cpu must not (it would shadow faiss-gpu)
inside pip freeze > "$work/freeze.txt" || fail "pip freeze failed in the image"
python3 - constraints.txt "$work/freeze.txt" <<'EOF' || fail "the image's versions differ from constraints.txt"
import re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
def pins(path):
    out = {}
    for line in open(path):
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[norm(name)] = version.split("+")[0].strip()
    return out
want, have = pins(sys.argv[1]), pins(sys.argv[2])
bad = [f"{n}: constraints.txt {v}, image {have[n]}" for n, v in want.items() if n in have and have[n] != v]
required = ["torch", "torchvision", "open-clip-torch", "webdataset", "faiss-gpu", "deepspeed"]
bad += [f"{n}: not installed in the image" for n in required if n not in have]
bad += ["faiss-cpu: installed beside faiss-gpu"] if "faiss-cpu" in have else []
for n in sorted(set(want) & set(have)):
    print(f"[docker_check] {n}=={have[n]}")
for line in bad:
    print(f"error: {line}", file=sys.stderr)
sys.exit(1 if bad else 0)
EOF

# 5. CUDA: torch's CUDA 13 and faiss-gpu's CUDA 12 libraries load side by side in one process
cuda_check=$(cat <<'EOF'
import re
import torch
import faiss
libs = sorted({m.group(1) for m in re.finditer(r"/(lib(?:cudart|cublas|cublasLt|cudnn|nccl)\.so\.\d+)", open("/proc/self/maps").read())})
print("torch", torch.__version__, "cuda", torch.version.cuda, "| faiss", faiss.__version__, "gpu build:", hasattr(faiss, "StandardGpuResources"))
print("loaded:", " ".join(libs))
assert torch.version.cuda and torch.version.cuda.startswith("13."), torch.version.cuda
assert hasattr(faiss, "StandardGpuResources"), "faiss is not the GPU build"
assert any(l.endswith(".so.12") for l in libs) and any(l.endswith(".so.13") for l in libs), libs
EOF
)
inside python -c "$cuda_check" > "$work/cuda.txt" 2>&1 || { cat "$work/cuda.txt" >&2; fail "torch and faiss-gpu do not load together"; }
sed 's/^/[docker_check] /' "$work/cuda.txt"
t4=$(stamp)

mb=$((size / 1000000))
echo "[docker_check] times: base $((t1 - t0)) s, build $((t2 - t1)) s, demo $((t3 - t2)) s, checks $((t4 - t3)) s; image $tag $mb MB"
echo "VERDICT: PASS (image built from docker/Dockerfile on $base, demo report written, versions match constraints.txt)"
