"""One run layout (mcl_dist/core/layout.py): no run-directory name is spelled outside it, and the dry run
names exactly the files a run writes, for the demo config, an evaluation-off run and a run on
remote (`pipe:`) shards."""
import ast
import fnmatch
import glob
import os
import re

import pytest
from braceexpand import braceexpand

from conftest import DEMO, DEMO_OVERRIDES, ROOT, run_demo, tiny_config, write_test_shards
from mcl_dist.core import layout

# tools that read run directories (tools/bench_suppression_* belong to a running benchmark)
SCANNED = sorted(glob.glob(os.path.join(ROOT, "mcl_dist", "**", "*.py"), recursive=True)) + \
    [p for p in sorted(glob.glob(os.path.join(ROOT, "tools", "*.py"))) if "bench_suppression_" not in p]


# a layout file name as a name of its own (".manifest.json", the synthetic data's record, is another file)
NAMED = re.compile("|".join(rf"(?<![\w.]){re.escape(n)}(?!\w)" for n in layout.FILE_NAMES))


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _is_join(call: ast.Call) -> bool:
    f = call.func
    return isinstance(f, ast.Attribute) and f.attr == "join" and isinstance(f.value, ast.Attribute) \
        and f.value.attr == "path"


def spelled_names(path: str) -> list[str]:
    """Where a file spells a run-directory name as a literal: a file name of the layout inside any
    string (docstrings aside), a folder name of the layout as an argument of os.path.join, or an
    f-string starting with a per-stage/per-rank stem (stage_{s}, part{r}-of, assign{r}, step_{n}, rank{r})."""
    tree = ast.parse(open(path).read(), path)
    docs, found = _docstrings(tree), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            found += [f"{node.lineno}: {m.group()!r} in {node.value!r}" for m in NAMED.finditer(node.value)]
        elif isinstance(node, ast.Call) and _is_join(node):
            found += [f"{node.lineno}: os.path.join(..., {a.value!r})" for a in node.args
                      if isinstance(a, ast.Constant) and a.value in layout.DIR_NAMES]
        elif isinstance(node, ast.JoinedStr):
            for head, nxt in zip(node.values, node.values[1:]):
                if isinstance(head, ast.Constant) and isinstance(nxt, ast.FormattedValue) and \
                        re.split(r"[/\s]", str(head.value))[-1] in layout.STEMS:
                    found.append(f"{node.lineno}: f-string {head.value!r}{{...}}")
    return found


def test_no_run_directory_name_is_spelled_outside_the_layout_module():
    assert len(layout.FILE_NAMES) >= 20 and "checkpoint.pt" in layout.FILE_NAMES and "labels.npz" in layout.FILE_NAMES
    bad = {os.path.relpath(p, ROOT): hits for p in SCANNED if not p.endswith(os.path.join("mcl_dist", "core", "layout.py"))
           for hits in [spelled_names(p)] if hits}
    assert bad == {}


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The three spellings the scan refuses are found (the test above would pass on an empty scan)."""
    src = tmp_path / "x.py"
    src.write_text('"""checkpoint.pt in a docstring is prose."""\nimport os\n'
                   'a = os.path.join("r", "stage_1", "labels.npz")\nb = os.path.join(d, "kmeans")\n'
                   'c = f"stage_{s}/train"\nd = f"{x}/part{r:04d}-of{w:04d}"\n')
    hits = spelled_names(str(src))
    assert len(hits) == 4 and all(not h.startswith("1:") for h in hits), hits


# -- the dry run's paths against a finished run's files ---------------------------------------------
def planned(cfg_path: str, run_dir: str, world: int, *overrides: str) -> list[str]:
    """The paths `--dry-run` prints (the same call the CLI makes)."""
    from mcl_dist.config.load import load_config
    from mcl_dist.pipeline.dry_run import build_plan, format_plan

    cfg = load_config(cfg_path, list(overrides))
    plan = build_plan(cfg, cfg_path, run_dir, world, list(overrides))
    printed = format_plan(plan).split("paths written:\n", 1)[1].splitlines()
    assert [line.strip() for line in printed] == plan["paths"]
    return plan["paths"]


def assert_plan_is_the_run(paths: list[str], run_dir: str) -> None:
    """Every file the run left is under a planned path, and every planned path names a file."""
    expanded = [p for pattern in paths for p in braceexpand(pattern)]
    found = sorted(os.path.join(d, f) for d, _, fs in os.walk(run_dir) for f in fs)

    def under(path: str, p: str) -> bool:
        return path.startswith(p) if p.endswith("/") else fnmatch.fnmatch(path, p)

    assert [f for f in found if not any(under(f, p) for p in expanded)] == []
    assert [p for p in expanded if not any(under(f, p) for f in found)] == []


@pytest.fixture
def plan_without_tensorboard(monkeypatch):
    """Plan as on a login node without the tensorboard extra (the run had it): the paths must follow
    train.report_to, not what the planning machine has installed. Call it after the run."""
    import importlib.util

    import mcl_dist.steps.train_step as train_step

    def hide() -> None:
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, **kw: None if name.split(".")[0] == "tensorboard" else real(name, *a, **kw))
        monkeypatch.setattr(train_step, "TENSORBOARD", False, raising=False)  # where a module cached the check

    return hide


def planned_in(cwd, cfg_path: str, run_dir: str, overrides: list[str]) -> list[str]:
    """`planned` from the run's working directory (the demo's paths are relative to it)."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return planned(cfg_path, run_dir, 1, *overrides)
    finally:
        os.chdir(old)


@pytest.mark.launch
def test_demo_config_plan_is_what_the_demo_run_writes(tmp_path, plan_without_tensorboard):
    """configs/demo.yaml, evaluation on (the synthetic data brings MMVP pairs): every plot is planned
    and drawn."""
    over = run_demo(tmp_path, "eval.probe_max_samples=64")
    run_dir = str(tmp_path / "runs" / "demo")
    plan_without_tensorboard()
    paths = planned_in(tmp_path, DEMO, run_dir, over)
    for name in (layout.MMVP_PLOT, layout.CLUSTER_PLOT, layout.DATA_CHECK):
        assert os.path.join(run_dir, name) in paths
    assert_plan_is_the_run(paths, run_dir)


@pytest.mark.launch
def test_eval_off_plan_is_what_the_run_writes(demo_eval_off, plan_without_tensorboard):
    """The demo with eval.enabled=false: no eval/ and no MMVP plot planned (the report draws none)."""
    run_dir = str(demo_eval_off / "runs" / "demo")
    plan_without_tensorboard()
    paths = planned_in(demo_eval_off, DEMO, run_dir, [*DEMO_OVERRIDES, "eval.enabled=false"])
    assert not [p for p in paths if p.startswith(os.path.join(run_dir, layout.EVAL) + "/") or layout.MMVP_PLOT in p]
    assert layout.folder(layout.tb_dir(layout.stage_dir(run_dir, 0))) in paths  # train.report_to's default
    assert_plan_is_the_run(paths, run_dir)


def test_remote_shard_plan_is_what_the_run_writes(tmp_path, plan_without_tensorboard):
    """`pipe:cat` shards, stage 0 only, eval off: streamed without an index, so no data check, no
    index/, and a report with the loss curves alone."""
    from mcl_dist.commands.pretrain import main

    local = write_test_shards(str(tmp_path / "d"), n_shards=2, per_shard=16)
    url = f"pipe:cat {os.path.dirname(local[0])}/s{{00000..00001}}.tar"
    cfg = tiny_config(tmp_path, local, **{"train.max_steps": 2, "train.checkpoint_every": 1})
    over = [f"data.train_shards={url}", "data.num_samples=32"]
    run_dir = str(tmp_path / "run")
    assert main(["--config", cfg, "--run-dir", run_dir, *over]) == 0
    plan_without_tensorboard()
    paths = planned(cfg, run_dir, 1, *over)
    assert layout.data_check_path(run_dir) not in paths and layout.folder(layout.index_dir(run_dir)) not in paths
    assert [p for p in paths if p.endswith(".png")] == [os.path.join(run_dir, layout.LOSS_PLOT)]
    assert_plan_is_the_run(paths, run_dir)
