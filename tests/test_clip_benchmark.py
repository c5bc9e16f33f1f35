"""clip_benchmark 1.6.2 scores our stage checkpoints and integrated models (real clip_benchmark code,
real open_clip tiny ViTs, real webdataset tars in clip_benchmark's wds layout made here)."""
import io
import json
import os

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from PIL import Image

from conftest import COLORS, ROOT

pytest.importorskip("clip_benchmark", reason="clip_benchmark is not installed (pip install -e .[eval])")

CLASSES = list(COLORS)


def jpg(color, size):
    arr = np.full((32, 32, 3), 255, np.uint8)
    arr[16 - size:16 + size, 16 - size:16 + size] = COLORS[color]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_split(root, split, n, seed, captions=False):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    with wds.TarWriter(os.path.join(root, split, "0.tar")) as sink:
        for i in range(n):
            c = int(rng.integers(len(CLASSES)))
            sample = {"__key__": f"{split}{i:04d}", "jpg": jpg(CLASSES[c], int(rng.integers(4, 14)))}
            if captions:
                sample["txt"] = f"a {CLASSES[c]} square"
            else:
                sample["cls"] = str(c).encode()
            sink.write(sample)
    with open(os.path.join(root, split, "nshards.txt"), "w") as f:
        f.write("1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A run directory with two stage checkpoints + the integrated model, and tiny wds datasets."""
    from mcl_dist.config.schema import ModelConfig
    from mcl_dist.core.files import save_torch
    from mcl_dist.integration.integrated_model import save_integrated
    from mcl_dist.model.open_clip_models import create, stage_checkpoint

    tmp = tmp_path_factory.mktemp("cb")
    run = tmp / "run"
    mcfg = ModelConfig(config_file=os.path.join(ROOT, "configs/models/tiny-vit.json"))
    os.makedirs(run)
    with open(run / "config.yaml", "w") as f:
        yaml.safe_dump({"model": {"config_file": mcfg.config_file}}, f)
    names, states = [], []
    for s in range(2):
        torch.manual_seed(s)
        b = create(mcfg, torch.device("cpu"))
        save_torch(stage_checkpoint(b["model"], b["name"], b["config"], stage=s), str(run / f"stage_{s}" / "checkpoint.pt"))
        names.append(b["name"])
        states.append(b["model"].state_dict())
    save_integrated(str(run / "integrated" / "model.pt"), names, states, None, b["config"])
    ds = str(tmp / "ds")
    write_split(ds, "test", 40, seed=0)
    write_split(ds, "train", 48, seed=1)
    with open(os.path.join(ds, "classnames.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    templates = ["a photo of a {c} square.", "a {c} thing."]
    with open(os.path.join(ds, "zeroshot_classification_templates.txt"), "w") as f:
        f.write("\n".join(templates) + "\n")
    with open(tmp / "ours_templates.txt", "w") as f:  # mcl-evaluate fills '{}'
        f.write("\n".join(t.replace("{c}", "{}") for t in templates) + "\n")
    ret = str(tmp / "ret")
    write_split(ret, "test", 16, seed=2, captions=True)
    with open(os.path.join(ret, "dataset_type.txt"), "w") as f:
        f.write("retrieval\n")
    return {"tmp": tmp, "run": run, "ds": ds, "ret": ret}


def bench(setup, models, *extra, dataset="wds/tiny", root=None):
    from mcl_dist.eval.clip_benchmark import main

    out = str(setup["tmp"] / "out" / "{model}_{dataset}_{task}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    argv = ["eval", "--model", *models, "--dataset", dataset, "--dataset_root", root or setup["ds"], "--no_amp",
            "--num_workers", "0", "--batch_size", "16", "--output", out, "--quiet", *extra]
    assert main(argv) == 0
    return out


def read(path):
    with open(path) as f:
        return json.load(f)


def test_zero_shot_matches_our_evaluate(setup):
    from mcl_dist.commands import evaluate as our_eval

    run = setup["run"]
    models = [str(run / "integrated" / "model.pt"), str(run / "stage_1" / "checkpoint.pt")]
    out = bench(setup, models, "--task", "zeroshot_classification")
    for path, label in zip(models, ["run-integrated", "run-stage_1"]):
        theirs = read(out.format(model=label, dataset="tiny", task="zeroshot_classification"))
        assert theirs["model"] == label and theirs["pretrained"] == path
        ours_path = str(setup["tmp"] / f"ours_{label}.json")
        assert our_eval.main(["--model", path, "--zs-webdataset", os.path.join(setup["ds"], "test", "0.tar"),
                              "--classnames", os.path.join(setup["ds"], "classnames.txt"),
                              "--templates", str(setup["tmp"] / "ours_templates.txt"), "--out", ours_path]) == 0
        ours = read(ours_path)["zero_shot"][".cls"]
        assert ours["n"] == 40
        assert abs(theirs["metrics"]["acc1"] - ours["top1"]) < 1e-6, (theirs, ours)
        assert np.isnan(theirs["metrics"]["acc5"])  # fewer than 5 classes: clip_benchmark leaves it NaN


def test_retrieval_runs_on_both_model_kinds(setup):
    run = setup["run"]
    models = [str(run / "integrated" / "model.pt"), str(run / "stage_0" / "checkpoint.pt")]
    out = bench(setup, models, "--task", "zeroshot_retrieval", "--recall_k", "1", "5", dataset="wds/ret",
                root=setup["ret"])
    for label in ("run-integrated", "run-stage_0"):
        m = read(out.format(model=label, dataset="ret", task="zeroshot_retrieval"))["metrics"]
        assert set(m) == {"image_retrieval_recall@1", "text_retrieval_recall@1", "image_retrieval_recall@5",
                          "text_retrieval_recall@5"}
        assert 0.0 <= m["image_retrieval_recall@1"] <= m["image_retrieval_recall@5"] <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="clip_benchmark 1.6.2's linear probe is CUDA-only")
def test_linear_probe_runs_on_both_model_kinds(setup):
    run = setup["run"]
    models = [str(run / "integrated" / "model.pt"), str(run / "stage_0" / "checkpoint.pt")]
    out = bench(setup, models, "--task", "linear_probe", "--fewshot_epochs", "2", "--feature_root",
                str(setup["tmp"] / "features"))
    for label in ("run-integrated", "run-stage_0"):
        m = read(out.format(model=label, dataset="tiny", task="linear_probe"))["metrics"]
        assert 0.0 <= m["lp_acc1"] <= 1.0 and 0.0 <= m["lp_per_class_recall"] <= 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_linear_probe_without_gpu_is_one_error_line(setup, capsys):
    from mcl_dist.eval.clip_benchmark import main

    ck = str(setup["run"] / "stage_0" / "checkpoint.pt")
    assert main(["eval", "--model", ck, "--dataset", "wds/tiny", "--task", "linear_probe"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "CUDA only" in err[0]


def test_open_clip_model_type_gets_the_run_config_registered(setup):
    """Plain clip_benchmark usage (model type open_clip) with a custom config: the adapter registers
    tiny-vit from the run's config.yaml, so open_clip's own loader builds it."""
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS

    _MODEL_CONFIGS.pop("tiny-vit", None)  # as in a fresh process
    ck = str(setup["run"] / "stage_0" / "checkpoint.pt")
    out = bench(setup, ["tiny-vit"], "--pretrained", ck, "--task", "zeroshot_classification")
    assert "tiny-vit" in open_clip.list_models()
    m = read(out.format(model="tiny-vit", dataset="tiny", task="zeroshot_classification"))["metrics"]
    ours = read(bench(setup, [ck], "--task", "zeroshot_classification")
                .format(model="run-stage_0", dataset="tiny", task="zeroshot_classification"))["metrics"]
    assert abs(m["acc1"] - ours["acc1"]) < 1e-6


def test_missing_model_file_is_one_error_line(setup, capsys):
    from mcl_dist.eval.clip_benchmark import main

    assert main(["eval", "--model", str(setup["tmp"] / "nope.pt"), "--dataset", "wds/tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope.pt" in err[0]
