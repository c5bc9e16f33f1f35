"""setup.py asks for ranges and constraints.txt holds the exact tested versions inside them (nothing is installed)."""
import ast
import os
import re
import shutil
import subprocess

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

CORE = ("torch", "torchvision", "open-clip-torch", "webdataset")


def setup_requirements() -> list[Requirement]:
    """install_requires and every extra of setup.py, read from its source (setup() is not run)."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    names = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
             if isinstance(t, ast.Name)}
    call = next(n.value for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call))
    kw = {k.arg: k.value for k in call.keywords}

    def strings(node) -> list[str]:
        node = names.get(node.id, node) if isinstance(node, ast.Name) else node
        if isinstance(node, ast.Starred):
            return strings(node.value)
        if isinstance(node, ast.List):
            return [s for e in node.elts for s in strings(e)]
        assert isinstance(node, ast.Constant) and isinstance(node.value, str), ast.dump(node)
        return [node.value]

    reqs = strings(kw["install_requires"])
    reqs += [s for value in kw["extras_require"].values for s in strings(value)]
    return [Requirement(r) for r in reqs]


def constraints() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; every line must be an exact name==version pin."""
    pins = {}
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", line)
            assert m, f"constraints.txt line {n}: {line!r} is not name==version"
            name = canonicalize_name(m.group(1))
            assert name not in pins, f"constraints.txt line {n}: {m.group(1)} pinned twice"
            pins[name] = m.group(2)
    return pins


def test_core_dependencies_are_ranges_not_pins():
    core = {canonicalize_name(r.name): r for r in setup_requirements() if canonicalize_name(r.name) in CORE}
    assert set(core) == set(CORE)
    for name, req in core.items():
        ops = {s.operator for s in req.specifier}
        assert "==" not in ops and "===" not in ops, f"setup.py pins {req}: a user's {name} would be replaced"
        assert ">=" in ops, f"setup.py's {req} has no floor (the oldest version tools/check_torch_range.sh runs)"


def test_constraints_pin_every_setup_dependency_inside_its_range():
    pins = constraints()
    for req in setup_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (setup.py) has no exact version in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt {req.name}=={pins[name]} is outside setup.py's range {req}")


def test_venv_script_installs_with_the_constraints():
    with open(os.path.join(ROOT, "tools", "venv.sh")) as f:
        text = f.read()
    assert "-c constraints.txt" in text
    # the stamp covers constraints.txt, so a changed pin reinstalls the venv
    assert re.search(r"cat setup\.py constraints\.txt tools/venv\.sh \| sha256sum", text)
    # no version typed into the script itself: constraints.txt is the one place
    assert not re.search(r"[A-Za-z]==[0-9]", text)


def test_device_wheels_downloads_the_constraints_versions(tmp_path):
    """tools/device_wheels.sh takes every version from constraints.txt (--print lists what it would
    download, nothing is fetched); a package constraints.txt does not pin is refused by name."""
    script = os.path.join(ROOT, "tools", "device_wheels.sh")
    with open(script) as f:
        assert not re.search(r"[A-Za-z]==[0-9]", f.read())  # no version typed into the script
    out = subprocess.run(["bash", script, "--print"], capture_output=True, text=True, timeout=60, check=True).stdout
    pins = constraints()
    listed = [line.split("==") for line in out.split()]
    assert {canonicalize_name(n) for n, _ in listed} >= {"open-clip-torch", "webdataset", "faiss-cpu"}
    for name, version in listed:
        assert pins.get(canonicalize_name(name)) == version, (name, version)
    # the same script beside a constraints.txt without ftfy
    (tmp_path / "tools").mkdir()
    shutil.copy(script, tmp_path / "tools")
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        (tmp_path / "constraints.txt").write_text("".join(l for l in f if not l.startswith("ftfy")))
    bad = subprocess.run(["bash", str(tmp_path / "tools" / "device_wheels.sh"), "--print"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: constraints.txt has no name==version line for ftfy"
