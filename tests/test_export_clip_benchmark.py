"""mcl-export-clip-benchmark writes clip_benchmark's wds layout, and the README's clip_benchmark
commands, parsed from README.md, run as written after a (tiny) demo run: real clip_benchmark 1.6.2,
real open_clip tiny ViTs, real webdataset shards."""
import json
import os
import re
import subprocess
import sys

import pytest
import webdataset as wds

from conftest import ROOT
from mcl_dist.commands.export_clip_benchmark import main as export_main

pytest.importorskip("clip_benchmark", reason="clip_benchmark is not installed (pip install -e .[eval])")


def readme_commands():
    """The bash block of README.md's clip_benchmark section, one command per (joined) line."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("### clip_benchmark"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


@pytest.fixture(scope="module")
def demo(demo_eval_off):
    """configs/demo.yaml as the README's demo runs it, made tiny (conftest.py run_demo), eval off."""
    return demo_eval_off


@pytest.mark.launch
def test_export_writes_clip_benchmarks_layout(demo, tmp_path, capsys):
    out = tmp_path / "cb"
    assert export_main([str(demo / "runs/demo"), "--out", str(out), "--label-field", "position", "--nshards", "3"]) == 0
    hint = capsys.readouterr().out.splitlines()[-1]  # names the real run and scores in fp32 like the report
    assert f"--model {demo / 'runs/demo/integrated/model.pt'} " in hint and hint.endswith(" --no_amp")
    zs = json.load(open(demo / "data/demo/zero_shot.json"))["position"]
    assert open(out / "position/classnames.txt").read().splitlines() == zs["classnames"]
    assert open(out / "position/zeroshot_classification_templates.txt").read().splitlines() == \
        [t.replace("{}", "{c}") for t in zs["templates"]]
    assert open(out / "position/test/nshards.txt").read().strip() == "3"
    ours = {}  # key -> class index, from the run's test shards
    for s in wds.WebDataset(str(demo / "data/demo/test-{00000..00001}.tar"), shardshuffle=False):
        ours[s["__key__"]] = zs["classnames"].index(json.loads(s["json"])["position"])
    got = {}
    for i in range(3):
        for s in wds.WebDataset(str(out / f"position/test/{i}.tar"), shardshuffle=False):
            got[s["__key__"]] = int(s["cls"])
            assert "png" in s or "jpg" in s
    assert got == ours and len(got) == 96
    assert sorted(os.listdir(out)) == ["position"]  # no temporary folder left


@pytest.mark.launch
def test_export_errors_are_one_line(demo, tmp_path, capsys):
    assert export_main([str(demo / "runs/demo"), "--out", str(tmp_path / "x"), "--label-field", "position",
                        "--nshards", "1000"]) == 2
    assert capsys.readouterr().err == ("error: label field position: 96 labelled samples for 1000 shards; lower "
                                       "--nshards (and clip_benchmark's --num_workers with it)\n")
    assert export_main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "config.yaml: not found" in capsys.readouterr().err


@pytest.mark.launch
def test_readme_commands_score_a_stage_and_the_integrated_model(demo):
    commands = readme_commands()
    assert commands[0].startswith("mcl-export-clip-benchmark runs/demo")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    for cmd in commands:
        proc = subprocess.run(cmd, shell=True, cwd=demo, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    for model in ("demo-stage_0", "demo-integrated"):
        for ds in ("color", "shape"):
            res = json.load(open(demo / "cb_results" / f"{ds}_{model}_zeroshot_classification.json"))
            assert res["dataset"] == f"wds/{ds}" and res["task"] == "zeroshot_classification"
            assert 0.0 <= res["metrics"]["acc1"] <= 1.0


@pytest.mark.launch
def test_export_from_any_labelled_shards(demo, tmp_path):
    """img2dataset-style shards with a label field, not a run: --shards, --label-field, --classnames."""
    names = tmp_path / "names.json"
    zs = json.load(open(demo / "data/demo/zero_shot.json"))["shape"]
    names.write_text(json.dumps({"classnames": zs["classnames"], "templates": ["a drawing of a {}."]}))
    out = tmp_path / "cb"
    assert export_main(["--shards", str(demo / "data/demo/test-{00000..00001}.tar"), "--label-field", "shape",
                        "--classnames", str(names), "--out", str(out)]) == 0
    assert open(out / "shape/zeroshot_classification_templates.txt").read() == "a drawing of a {c}.\n"
    assert open(out / "shape/test/nshards.txt").read().strip() == "4"
    n = sum(1 for i in range(4) for _ in wds.WebDataset(str(out / f"shape/test/{i}.tar"), shardshuffle=False))
    assert n == 96
    assert export_main(["--shards", str(demo / "data/demo/test-00000.tar"), "--out", str(out)]) == 2
