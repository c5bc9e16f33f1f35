"""docker/Dockerfile installs exactly constraints.txt's versions on a coherent CUDA base (no Docker
engine needed; tools/docker_check.sh builds and runs the image, too slow for the suite)."""
import ast
import os
import re
import subprocess

import pytest

from conftest import ROOT

DOCKERFILE = os.path.join(ROOT, "docker", "Dockerfile")
# what the image must hold for train.engine=deepspeed and cluster.backend=faiss on GPU
IMAGE_PACKAGES = {"torch", "torchvision", "open-clip-torch", "webdataset", "faiss-gpu", "deepspeed"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    """constraints.txt as {normalised name: version}; every line is name==version."""
    pins = {}
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                name, sep, version = line.partition("==")
                assert sep and version, f"constraints.txt: {line!r} is not name==version"
                pins[norm(name)] = version
    return pins


def setup_extras() -> set[str]:
    """The extras_require keys of setup.py's setup() call."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require" and isinstance(node.value, ast.Dict):
            return {k.value for k in node.value.keys}
    raise AssertionError("setup.py has no extras_require dict")


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


def pip_installs(args: str) -> list[list[str]]:
    """The argument lists of every `pip install` in one RUN's shell line."""
    out = []
    for command in re.split(r"&&|;", args):
        words = command.split()
        for i in range(len(words) - 1):
            if words[i] == "pip" and words[i + 1] == "install":
                out.append(words[i + 2:])
    return out


def requirements(argv: list[str]) -> tuple[list[str], list[str]]:
    """(package names, extras of an -e/. install) that one pip install's arguments ask for."""
    names, extras, skip = [], [], False
    for word in argv:
        word = word.strip("\"'")
        if skip:
            skip = False
        elif word in ("-c", "--constraint", "-r"):
            skip = True
        elif word.startswith("-"):
            continue
        elif word.startswith("."):
            extras += re.findall(r"[\w-]+", word.partition("[")[2])
        else:
            names.append(word)
    return names, extras


def test_dockerfile_installs_through_constraints_txt():
    pins = constraints()
    ins = instructions()
    runs = [(i, args) for i, (word, args) in enumerate(ins) if word == "RUN"]
    installed, extras, first_constrained = [], [], None
    for i, args in runs:
        for argv in pip_installs(args):
            names, more = requirements(argv)
            if names == ["pip", "setuptools", "wheel"]:
                continue  # the venv's own tools, before constraints.txt is in the image
            # one source of versions: constraints.txt, passed to every install, no pins in the file
            assert "-c" in argv and argv[argv.index("-c") + 1] == "constraints.txt", argv
            assert not any("==" in w or ">=" in w for w in argv), argv
            first_constrained = i if first_constrained is None else first_constrained
            installed += [norm(n) for n in names]
            extras += more
    assert IMAGE_PACKAGES <= set(installed), IMAGE_PACKAGES - set(installed)
    unpinned = [n for n in installed if n not in pins]
    assert not unpinned, f"the Dockerfile installs {unpinned}, which constraints.txt does not pin"
    # the GPU image has faiss-gpu only: faiss-cpu (the faiss and dev extras) would shadow it
    assert "faiss-cpu" not in installed and not {"faiss", "dev"} & set(extras), extras
    assert set(extras) <= setup_extras(), set(extras) - setup_extras()
    # constraints.txt is copied to the WORKDIR that -c constraints.txt is relative to, before use
    copies = [i for i, (w, a) in enumerate(ins) if w == "COPY" and "constraints.txt" in a.split()[:-1]]
    assert copies and copies[0] < first_constrained, "COPY constraints.txt must precede the installs"
    assert ins[copies[0]][1].split()[-1] in ("./", "."), ins[copies[0]]
    assert any(w == "WORKDIR" for w, _ in ins[:copies[0]])
    # torch before DeepSpeed, which is built against it without build isolation and without ops
    torch_at = min(i for i, a in runs if any("torch" in requirements(v)[0] for v in pip_installs(a)))
    ds_at = min(i for i, a in runs if any("deepspeed" in requirements(v)[0] for v in pip_installs(a)))
    assert torch_at < ds_at
    assert "DS_BUILD_OPS=0" in ins[ds_at][1] and "--no-build-isolation" in ins[ds_at][1]


def test_dockerfile_cuda_base_matches_torch():
    ins = instructions()
    assert [a for w, a in ins if w == "FROM"] == ["${BASE_IMAGE}"]
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    base = args.get("BASE_IMAGE", "")
    # the users' default stays an NVIDIA CUDA image; tools/docker_check.sh swaps only this argument
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime|cudnn-runtime|devel|cudnn-devel)-ubuntu\d\d\.04", base)
    assert m, base
    import torch
    if torch.__version__.split("+")[0] != constraints()["torch"] or torch.version.cuda is None:
        pytest.skip(f"this torch ({torch.__version__}) is not constraints.txt's CUDA build")
    # torch's CUDA libraries need the driver the base image's NVIDIA_REQUIRE_CUDA asks the runtime for
    assert m.group(1) == torch.version.cuda.split(".")[0], (base, torch.version.cuda)


def test_dockerfile_entrypoint_context_and_check_script():
    ins = instructions()
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
    # the slow check builds this very file, changing only BASE_IMAGE
    script = os.path.join(ROOT, "tools", "docker_check.sh")
    subprocess.run(["bash", "-n", script], check=True)
    with open(script) as f:
        text = f.read()
    build = re.search(r"^\s*(?:if !\s*)?podman build (?:[^\n]*\\\n)*[^\n]*", text, re.M).group(0)
    assert "-f docker/Dockerfile" in build and build.count("--build-arg") == 1 and '"BASE_IMAGE=' in build, build
    assert "mcl-entrypoint --config configs/demo.yaml" in text and "report.md" in text
