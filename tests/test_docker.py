"""docker/Dockerfile installs exactly the versions setup.py pins (no Docker engine needed here)."""
import ast
import os
import re
import subprocess

from conftest import ROOT

DOCKERFILE = os.path.join(ROOT, "docker", "Dockerfile")
PINNED = ("TORCH", "TORCHVISION", "OPEN_CLIP", "WEBDATASET", "FAISS_GPU", "DEEPSPEED")
_PIN = re.compile(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9_.-]*)==([0-9][^\s\"'\\]*)")


def setup_pins() -> dict[str, str]:
    """setup.py's module-level version constants: {'TORCH': 'torch==2.14.1', ...}."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    pins = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.isupper():
                    pins[target.id] = node.value.value
    return pins


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    with open(DOCKERFILE) as f:
        lines = [line.rstrip("\n") for line in f if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_dockerfile_installs_exactly_the_setup_py_pins():
    pins = setup_pins()
    assert set(PINNED) <= set(pins), f"setup.py lacks {set(PINNED) - set(pins)}"
    runs = [args for word, args in instructions() if word == "RUN"]
    installed: dict[str, list[str]] = {}
    for args in runs:
        for name, version in _PIN.findall(args):
            installed.setdefault(norm(name), []).append(version)
    for const in PINNED:
        name, version = pins[const].split("==")
        assert installed.get(norm(name)) == [version], (
            f"setup.py {const} = {pins[const]!r}, Dockerfile installs {installed.get(norm(name))}")
    # the GPU image has faiss-gpu, not the CPU wheel of the dev extra
    assert norm(pins["FAISS_CPU"].split("==")[0]) not in installed
    # torch before DeepSpeed, which is built against it without build isolation and without ops
    order = [i for i, a in enumerate(runs) if "torch==" in a], [i for i, a in enumerate(runs) if "deepspeed==" in a]
    assert order[0] and order[1] and order[0][0] < order[1][0]
    ds = runs[order[1][0]]
    assert "DS_BUILD_OPS=0" in ds and "--no-build-isolation" in ds


def test_dockerfile_base_entrypoint_and_context():
    ins = instructions()
    froms = [a for w, a in ins if w == "FROM"]
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    base = args.get("BASE_IMAGE", "") if froms == ["${BASE_IMAGE}"] else froms[0]
    assert re.match(r"(nvidia/cuda:\d+\.\d+.*-cudnn.*-ubuntu|pytorch/pytorch:)", base), base
    assert [a for w, a in ins if w == "ENTRYPOINT"] == ['["mcl-entrypoint"]']
    with open(os.path.join(ROOT, "docker", "entrypoint.sh")) as f:
        entry = f.read()
    assert re.search(r"^exec torchrun .* launch/pretrain\.py \"\$@\"$", entry, re.M), entry
    subprocess.run(["bash", "-n", os.path.join(ROOT, "docker", "entrypoint.sh")], check=True)
    # every COPY source exists and is not excluded from the build context
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    assert {".venv", "runs", "data", ".git"} <= ignored
    for w, a in ins:
        if w == "COPY":
            for src in a.split()[:-1]:
                if src.startswith("--"):
                    continue
                assert os.path.exists(os.path.join(ROOT, src)), src
                assert src.split("/")[0] not in ignored, src
