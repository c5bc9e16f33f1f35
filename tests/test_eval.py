"""Evaluation: MMVP pair scoring, zero-shot, linear probe / k-NN, the report and the CLI."""
import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image
from torch import nn

from mcl_dist.eval.run_metrics import (evaluate_loaded, evaluate_mmvp, evaluate_zero_shot, iter_image_folder,
                                    iter_webdataset)
from mcl_dist.eval.linear_probe import knn_accuracy, linear_probe
from mcl_dist.eval.mmvp import read_pairs

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "mmvp_small")
COLORS = {"red": (230, 20, 20), "green": (20, 210, 20), "blue": (20, 20, 230)}
WORDS = {"red": 0, "green": 1, "blue": 2}


class FakeTokenizer:
    """Remembers each text and hands out its index as the 'token'."""

    def __init__(self):
        self.texts = []

    def __call__(self, texts):
        self.texts += list(texts)
        return torch.arange(len(self.texts) - len(texts), len(self.texts)).unsqueeze(1)


class ColourModel(nn.Module):
    """A test double, on purpose: images embed as their mean RGB and texts as the one-hot of the
    colour word they contain, so every similarity is known in advance and the tests check the
    SCORING RULES (pairs, top-k, labels), not what a network happens to learn."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tok = tokenizer

    def encode_image(self, x, normalize=False):
        f = x.mean(dim=(2, 3))
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, tokens, normalize=False):
        f = torch.zeros(len(tokens), 3)
        for row, i in enumerate(tokens[:, 0].tolist()):
            for word, k in WORDS.items():
                if word in self.tok.texts[i]:
                    f[row, k] = 1.0
        return F.normalize(f, dim=-1) if normalize else f


def to_tensor(img):
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.fixture
def fake():
    tok = FakeTokenizer()
    return ColourModel(tok), to_tensor, tok


# ---------------------------------------------------------------------------- MMVP

def test_mmvp_pair_scores(fake):
    preds = []
    res = evaluate_mmvp(*fake, FIXTURE, predictions=preds)
    # pair (3, 4): statement 3 right, statement 4 ("green" about a blue image) wrong -> pair wrong
    assert res["per_category"] == {"Color and Appearance": 0.5, "Quantity and Count": 1.0}
    assert res["mean"] == 0.75 and res["pairs"] == 4
    assert [p["correct"] for p in preds] == [True, False, True, True]
    assert preds[1]["pred"] == [0, 0] and preds[1]["gt"] == [0, 1]
    assert fake[2].texts[0] == "a photo of the square is red"  # the reference's prompt prefix


def test_mmvp_released_layout(fake, tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "MLLM_VLM Images")  # images in the release's sub-folder
    shutil.copy(os.path.join(FIXTURE, "Questions.csv"), tmp_path / "Questions.csv")
    assert evaluate_mmvp(*fake, str(tmp_path))["mean"] == 0.75


def test_mmvp_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Questions.csv"):
        read_pairs(str(tmp_path))
    shutil.copytree(FIXTURE, tmp_path / "m")
    csv_path = tmp_path / "m" / "Questions.csv"
    os.remove(tmp_path / "m" / "Quantity and Count" / "7.png")
    with pytest.raises(FileNotFoundError, match=r"Quantity and Count/7\.jpg.*Questions\.csv:8"):
        read_pairs(str(tmp_path / "m"))
    csv_path.write_text("Question ID,Type,Statement\n1,Color and Appearance,a\n2,Color and Appearance\n")
    with pytest.raises(ValueError, match=r"Questions\.csv:3: expected 3 columns"):
        read_pairs(str(tmp_path / "m"))
    csv_path.write_text("Question ID,Type,Statement\nx,Color and Appearance,a\n2,Color and Appearance,b\n")
    with pytest.raises(ValueError, match=r"Questions\.csv:2: question id 'x'"):
        read_pairs(str(tmp_path / "m"))
    csv_path.write_text("Question ID,Type,Statement\n1,Color and Appearance,a\n")
    with pytest.raises(ValueError, match="odd number"):
        read_pairs(str(tmp_path / "m"))


# ---------------------------------------------------------------------------- zero-shot

def write_folder(root, items):
    for i, (cls, colour) in enumerate(items):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        Image.new("RGB", (8, 8), COLORS[colour]).save(os.path.join(root, cls, f"{i}.png"))


def test_zero_shot_known_answers(fake, tmp_path):
    # 4 images; the last is filed under "red" but is blue: top-1 3/4, top-3 (all classes) 1.0
    write_folder(tmp_path, [("red", "red"), ("green", "green"), ("blue", "blue"), ("red", "blue")])
    names = ["red", "green", "blue"]
    res = evaluate_zero_shot(*fake, iter_image_folder(str(tmp_path), names), names, ["a photo of a {}."], "cpu", 3)
    assert res == {"top1": 0.75, "top5": 1.0, "n": 4, "classes": 3}


def write_shard(path, colours, with_cls=True):
    with wds.TarWriter(str(path)) as sink:
        for i, c in enumerate(colours):
            img = Image.new("RGB", (8, 8), COLORS[c])
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            sample = {"__key__": f"k{i:04d}", "png": buf.getvalue(), "json": json.dumps({"color": c})}
            if with_cls:
                sample["cls"] = str(WORDS[c])
            sink.write(sample)
    return str(path)


def test_webdataset_labels_and_evaluate_loaded(fake, tmp_path):
    rng = np.random.default_rng(0)
    train = write_shard(tmp_path / "train.tar", [list(COLORS)[i] for i in rng.integers(0, 3, 60)])
    test = write_shard(tmp_path / "test.tar", ["red", "green", "blue", "blue"])
    assert [y for _, y in iter_webdataset(test)] == [0, 1, 2, 2]  # .cls
    assert [y for _, y in iter_webdataset(test, "color", ["blue", "red", "green"])] == [1, 2, 0, 0]
    with pytest.raises(ValueError, match="not among the class names"):
        list(iter_webdataset(test, "color", ["red"]))
    res = evaluate_loaded(*fake, test_urls=test, train_urls=train, label_fields=["color", ".cls"],
                          zero_shot_classes={".cls": {"classnames": ["red", "green", "blue"]}}, mmvp_dir=FIXTURE)
    # json string labels become class names sorted: blue, green, red
    assert res["zero_shot"]["color"]["top1"] == 1.0 and res["zero_shot"][".cls"]["top1"] == 1.0
    assert res["linear_probe"]["color"]["top1"] == 1.0 and res["knn"][".cls"]["top1"] == 1.0
    assert res["mmvp"]["mean"] == 0.75


# ---------------------------------------------------------------------------- probe

def test_linear_probe_separable_and_random():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 32, generator=g) * 3
    ytr, yte = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (400,), generator=g)
    xtr = centers[ytr] + torch.randn(200, 32, generator=g)
    xte = centers[yte] + torch.randn(400, 32, generator=g)
    res = linear_probe(xtr, ytr, xte, yte, seed=0)
    assert res["top1"] >= 0.99 and res == linear_probe(xtr, ytr, xte, yte, seed=0)  # deterministic
    assert knn_accuracy(xtr, ytr, xte, yte, k=20)["top1"] >= 0.99
    # labels unrelated to the features: chance (0.25) on held-out data
    rtr, rte = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (2000,), generator=g)
    noise_tr, noise_te = torch.randn(200, 32, generator=g), torch.randn(2000, 32, generator=g)
    assert abs(linear_probe(noise_tr, rtr, noise_te, rte)["top1"] - 0.25) < 0.05
    assert abs(knn_accuracy(noise_tr, rtr, noise_te, rte)["top1"] - 0.25) < 0.05


# ---------------------------------------------------------------------------- report + CLI

def test_report_with_and_without_mmvp(tmp_path, fake):
    from mcl_dist.report.run_report import write_report

    mm = evaluate_mmvp(*fake, FIXTURE)
    results = {"stage_1": {"zero_shot": {"color": {"top1": 0.5, "n": 4}}, "mmvp": mm, "notes": []},
               "stage_0": {"zero_shot": {"color": {"top1": 0.25, "n": 4}}, "notes": ["MMVP skipped: no folder"]},
               "integrated": {"zero_shot": {"color": {"top1": 0.75, "n": 4}}, "mmvp": mm}}
    path = write_report(str(tmp_path), results, {0: [(1, 2.0), (2, 1.5)], "1": [(1, 1.8)]},
                        {0: [10, 5, 1]}, {1: {"labels": 12, "median_size": 3.5, "path": "/x/y"}})
    text = open(path).read()
    # zero-shot top-1 by attribute, with its 95% interval over n = 4
    assert "| stage_0 | 0.250 [0.05, 0.70] |" in text and "| integrated | 0.750 [0.30, 0.95] |" in text
    assert text.index("## Summary") < text.index("### Zero-shot top-1") < text.index("## MMVP-VLM pairs")
    assert "MMVP skipped" in text and "/x/y" not in text
    for png in ("loss_curves.png", "cluster_sizes.png", "mmvp_by_stage.png"):
        assert os.path.getsize(tmp_path / png) > 1000
    empty = tmp_path / "empty"
    text = open(write_report(str(empty), {}, {}, {}, {})).read()
    assert "No MMVP results" in text and "No loss curves" in text and "No evaluation results" in text
    assert not os.path.exists(empty / "mmvp_by_stage.png")


def test_cli_on_integrated_tiny_model(tmp_path):

    import open_clip

    from mcl_dist.integration.integrated_model import save_integrated

    from mcl_dist.commands.evaluate import main  # mcl-evaluate

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    from mcl_dist.objectives.clip import _register

    _register("mcl-test-tiny-eval", cfg)
    states = [open_clip.create_model("mcl-test-tiny-eval").state_dict() for _ in range(2)]
    model_path = str(tmp_path / "integrated.pt")
    save_integrated(model_path, ["mcl-test-tiny-eval"] * 2, states, None, cfg)
    test = write_shard(tmp_path / "test.tar", ["red", "green", "blue", "red"])
    out = str(tmp_path / "res.json")
    assert main(["--model", model_path, "--mmvp", FIXTURE, "--zs-webdataset", test, "--label-field", "color",
                 "--probe-train", test, "--out", out, "--device", "cpu"]) == 0
    res = json.load(open(out))
    assert res["mmvp"]["pairs"] == 4 and 0 <= res["zero_shot"]["color"]["top1"] <= 1
    assert res["linear_probe"]["color"]["n_train"] == 4
    assert main(["--model", model_path, "--mmvp", str(tmp_path), "--out", out]) == 2  # no Questions.csv
