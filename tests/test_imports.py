"""The package's import graph (module-level imports, read with ast): no circle, and imports inside
functions only for optional dependencies (docs/design.md, style)."""
import ast
import os

from conftest import ROOT

PKG = os.path.join(ROOT, "mcl_dist")
# imported on first use only: optional extras, or heavy/special modules a command needs alone
OPTIONAL = {"faiss", "deepspeed", "clip_benchmark", "sklearn", "pandas", "torch.utils.tensorboard",
            "open_clip_train", "wandb"}


def modules() -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return out


def _targets(node: ast.AST, name: str, known: set) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative import
        parts = name.split(".")[: -node.level]
        base = ".".join(parts + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def module_level_imports(name: str, path: str, known: set) -> set[str]:
    out, todo = set(), [ast.parse(open(path).read())]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update(t for t in _targets(node, name, known) if t in known and t != name)
        # a function's body runs later: its imports are no import-time edge
        todo += [c for c in ast.iter_child_nodes(node) if not isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return out


def function_imports(path: str) -> list[str]:
    out = []
    for fn in ast.walk(ast.parse(open(path).read())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    out += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    out.append(node.module)
    return out


def find_cycle(graph: dict[str, set]) -> list[str]:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        state[n] = "done"
        stack.pop()
        return []

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return []


def test_no_import_cycle_inside_the_package():
    mods = modules()
    graph = {n: module_level_imports(n, p, set(mods)) for n, p in mods.items()}
    assert len(graph) > 50 and graph["mcl_dist.pipeline.runner"] >= {"mcl_dist.steps", "mcl_dist.run.manifest"}
    assert find_cycle(graph) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the walk finds one


# the layers, lowest first (docs/design.md section 9): a module imports only from its own layer or lower ones
LAYERS = ["core", "config", "data", "synthetic", "model", "objectives", "training", "clustering", "integration",
          "eval", "report", "run", "steps", "pipeline", "commands", "bench"]
# the config check collects every layer's registered choices, so a config is refused in full when it loads
REACHES_UP = {"mcl_dist/config/choices.py", "mcl_dist/config/load.py"}


def all_imports(path: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def upward_imports(mods: dict[str, str]) -> list[tuple[str, str]]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for name, path in mods.items():
        layer = name.split(".")[1] if name.count(".") else None
        for target in sorted(all_imports(path)):
            parts = target.split(".")
            if parts[0] == "mcl_dist" and len(parts) > 1 and parts[1] in rank and layer in rank \
                    and rank[parts[1]] > rank[layer]:
                bad.append((os.path.relpath(path, ROOT), target))
    return bad


def test_the_package_is_grouped_by_layer_with_one_name_per_module():
    top = sorted(f for f in os.listdir(PKG) if f.endswith(".py"))
    assert top == ["__init__.py"]
    assert sorted(d for d in os.listdir(PKG) if os.path.isfile(os.path.join(PKG, d, "__init__.py"))) == sorted(LAYERS)
    names: dict[str, list[str]] = {}
    for name in modules():
        if name.count(".") >= 2:  # a package's modules, not the packages themselves
            names.setdefault(name.rsplit(".", 1)[1], []).append(name)
    assert {n: m for n, m in names.items() if len(m) > 1} == {}


def test_layers_import_only_from_themselves_and_lower_layers(tmp_path):
    bad = upward_imports(modules())
    assert sorted({p for p, _ in bad}) == sorted(REACHES_UP), bad
    # the walk sees an upward import where one is written, at the top or inside a function
    fake = tmp_path / "files.py"
    fake.write_text("import os\ndef f():\n    from mcl_dist.steps import plan_steps\n")
    assert [t for _, t in upward_imports({"mcl_dist.core.files": str(fake)})] == ["mcl_dist.steps.plan_steps"]


def test_imports_inside_functions_are_optional_dependencies():
    late = {(os.path.relpath(p, ROOT), m) for p in modules().values() for m in function_imports(p)}
    assert sorted((p, m) for p, m in late if not any(m == o or m.startswith(o + ".") for o in OPTIONAL)) == []


def tool_imports(path: str, known: set) -> set[str]:
    """Every tools/ module a script imports, at the top or inside a function: the scripts reach each
    other through sys.path, so a function-level import closes a circle as surely as a top one."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module in known:
            out.add(node.module)
    return out


def test_no_import_cycle_among_the_tools():
    tools = os.path.join(ROOT, "tools")
    paths = {f[:-3]: os.path.join(tools, f) for f in os.listdir(tools) if f.endswith(".py")}
    graph = {n: tool_imports(p, set(paths)) - {n} for n, p in paths.items()}
    assert graph["bench_suppression_report"] >= {"bench_suppression_families"}  # the walk sees these edges
    assert find_cycle(graph) == []


def test_the_package_never_imports_the_tools():
    tools = {f[:-3] for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py")}
    bad = sorted((os.path.relpath(p, ROOT), m) for p in modules().values()
                 for m in tool_imports(p, tools))
    assert bad == []


def test_no_tool_only_re_exports_a_package_entry_point():
    """A command has one name (`mcl-X` / `python -m mcl_dist...`); a tools/ copy of it is a second."""
    thin = []
    for f in sorted(os.listdir(os.path.join(ROOT, "tools"))):
        if f.endswith(".py"):
            body = [n for n in ast.parse(open(os.path.join(ROOT, "tools", f)).read()).body
                    if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]  # the docstring
            froms = [n for n in body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("mcl_dist")]
            defs = [n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign))]
            if froms and not defs and len(body) <= 3:
                thin.append(f)
    assert thin == []
