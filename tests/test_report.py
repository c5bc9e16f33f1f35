"""report.md: the recipe, wall times, a five-line summary, then one table per metric (rows = models,
columns = attributes) with chance, n and 95% intervals; top-5 only where classes > 5; tables <= 10
columns; one loss panel per stage."""
import os
import re

import pytest

from mcl_dist.report.recipe import recipe, wilson
from mcl_dist.report.run_report import write_report

CLASSES = {"color": 10, "shape": 4, "texture": 5}


def scores(probe, mmvp_mean, zs=0.5):
    attrs = ("color", "shape", "texture")
    return {"zero_shot": {a: {"top1": zs, "top5": 1.0, "n": 10, "classes": CLASSES[a]} for a in attrs},
            "linear_probe": {a: {"top1": p, "n_train": 5, "n_test": 40, "classes": CLASSES[a]}
                             for a, p in zip(attrs, probe)},
            "knn": {a: {"top1": 0.3, "k": 20, "n_test": 40} for a in attrs},
            "mmvp": {"per_category": {"color": mmvp_mean, "shape": mmvp_mean}, "mean": mmvp_mean, "overall": mmvp_mean,
                     "pairs": 64, "pairs_per_category": {"color": 32, "shape": 32}}}


def ci(p, n):
    lo, hi = wilson(p, n)
    return f"{p:.3f} [{lo:.2f}, {hi:.2f}]"


def test_summary_and_one_table_per_metric(tmp_path):
    results = {"stage_0": scores((0.9, 0.2, 0.4), 0.30), "stage_1": scores((0.8, 0.5, 0.3), 0.20),
               "stage_2": scores((0.7, 0.4, 0.6), 0.35), "integrated": scores((0.95, 0.55, 0.5), 0.40)}
    text = open(write_report(str(tmp_path), results, {}, {}, {})).read()
    summary = text.split("## Summary\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert summary[0] == (f"- MMVP mean: stage_0 {ci(0.3, 64)}; stage_1 {ci(0.2, 64)} (-0.100, within noise); "
                          f"stage_2 {ci(0.35, 64)} (+0.050, within noise); integrated {ci(0.4, 64)} (+0.100, within noise)")
    assert summary[1] == f"- linear probe top-1 of stage_0: color {ci(0.9, 40)}, shape {ci(0.2, 40)}, texture {ci(0.4, 40)}"
    # no "best later stage": the only split is the test split, and nothing is picked on it
    assert not any("best" in line for line in summary)
    assert summary[6:] == [  # shape 0.20 [0.10, 0.35] vs 0.55 [0.40, 0.69]: separate; +0.10 at n = 40: noise
        "- integrated vs stage_0: color +0.050 (within noise), shape +0.350 (above), texture +0.100 (within noise)",
        "- integrated beats stage_0 on 1 of 3 probed attributes where the 95% intervals separate "
        "(below on 0, within noise on 2)"]
    titles = re.findall(r"^### (.+)$", text, re.M)
    assert titles == ["Zero-shot top-1", "Zero-shot top-5", "Linear probe top-1", "k-NN top-1"]
    widths = {line.count("|") - 1 for line in text.splitlines() if line.startswith("| ")}
    assert max(widths) <= 4  # model + 3 attributes (MMVP: model + 2 categories + mean)
    probe = text.split("### Linear probe top-1\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert probe[0] == "| model | color | shape | texture |"
    assert probe[2:4] == ["| chance | 0.100 | 0.250 | 0.200 |", "| n | 40 | 40 | 40 |"]
    assert probe[4] == f"| stage_0 | {ci(0.9, 40)} | {ci(0.2, 40)} | {ci(0.4, 40)} |"
    assert probe[7] == f"| integrated | {ci(0.95, 40)} | {ci(0.55, 40)} | {ci(0.5, 40)} |"
    top5 = text.split("### Zero-shot top-5\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert top5[0] == "| model | color |"  # 4 and 5 classes: top-5 is 1.0 by construction, not shown
    assert top5[2] == "| chance | 0.500 |"
    mmvp = text.split("## MMVP-VLM pairs\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert mmvp[2:4] == ["| chance | 0.250 | 0.250 | 0.250 |", "| n (pairs) | 32 | 32 | 64 |"]
    assert f"| integrated | {ci(0.4, 32)} | {ci(0.4, 32)} | {ci(0.4, 64)} |" in mmvp  # the mean over all 64 pairs
    assert "With 32 pairs in a category one pair moves its accuracy by 0.031" in text


@pytest.mark.parametrize("n, beats", [(20, 0), (400, 1)])
def test_beats_only_where_the_intervals_separate(tmp_path, n, beats):
    """0.50 vs 0.70: within noise over 20 test samples, apart over 400."""
    def probe(p):
        return {"linear_probe": {"color": {"top1": p, "n_test": n, "classes": 4}},
                "mmvp": {"mean": p, "pairs": n, "per_category": {"c": p}, "pairs_per_category": {"c": n}}}
    text = open(write_report(str(tmp_path), {"stage_0": probe(0.5), "integrated": probe(0.7)}, {}, {}, {})).read()
    verdict = "above" if beats else "within noise"
    assert f"- integrated beats stage_0 on {beats} of 1 probed attributes" in text
    assert f"color +0.200 ({verdict})" in text and f"integrated {ci(0.7, n)} (+0.200, {verdict})" in text


def test_summary_without_mmvp_or_probe_says_so(tmp_path):
    results = {"stage_0": {"zero_shot": {"color": {"top1": 0.5}}}, "integrated": {"zero_shot": {"color": {"top1": 0.6}}}}
    text = open(write_report(str(tmp_path), results, {}, {}, {})).read()
    assert "- MMVP mean: no MMVP results for stage_0" in text
    assert "- linear probe: no per-attribute results for stage_0" in text


def test_wilson_interval_matches_the_formula_and_stays_in_0_1():
    lo, hi = wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson(1.0, 32)[1] == 1.0 and 0.85 < wilson(1.0, 32)[0] < 0.9  # p = 1: not a zero-width interval
    assert wilson(0.0, 10)[0] == 0.0 and wilson(0.5, 0) is None


def test_wide_tables_are_cut_to_ten_columns_and_the_label_table_is_transposed(tmp_path):
    attrs = [f"a{i:02d}" for i in range(14)]
    results = {"stage_0": {"zero_shot": {a: {"top1": 0.5, "n": 20, "classes": 3} for a in attrs}}}
    stats = {1: {f"stat{i:02d}": i for i in range(16)}, 2: {f"stat{i:02d}": 2 * i for i in range(16)}}
    text = open(write_report(str(tmp_path), results, {0: [(1, 2.0)], 1: [(1, 1.0)]}, {}, stats)).read()
    widths = [line.count("|") - 1 for line in text.splitlines() if line.startswith("| ")]
    assert max(widths) <= 10
    zs = text.split("### Zero-shot top-1\n\n", 1)[1].split("\n\nAccuracies", 1)[0]
    assert zs.count("| model |") == 2 and "| model | a09 | a10 | a11 | a12 | a13 |" in zs  # 14 = 9 + 5
    assert "| statistic | stage 1 | stage 2 |" in text and "| stat15 | 15 | 30 |" in text
    assert "One panel per stage: stages >= 1 train a label-masked loss" in text
    assert os.path.getsize(tmp_path / "loss_curves.png") > 0


def test_stop_signals_are_rows_of_the_label_table(tmp_path):
    """The labels step's signal/* records (the stop-rule signals) are rows beside the label statistics; cka_prev
    exists from stage 2 on only."""
    stats = {1: {"labels": 12, "signal/nmi": 0.25, "signal/survived_samples": 0.875},
             2: {"labels": 40, "signal/nmi": 0.5, "signal/survived_samples": 0.5, "signal/cka_prev": 0.9375}}
    text = open(write_report(str(tmp_path), {}, {}, {}, stats)).read()
    assert "| statistic | stage 1 | stage 2 |" in text
    assert "| signal/cka_prev | – | 0.9375 |" in text and "| signal/survived_samples | 0.875 | 0.5 |" in text


def test_recipe_and_wall_times_from_a_real_config_and_manifest(tmp_path):
    from mcl_dist.config.load import load_config
    from mcl_dist.core.files import write_json
    from mcl_dist.report.recipe import step_times

    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs/cc12m_vit_l14_paper.yaml"))
    rec = recipe(cfg, 8, {1: 100, 2: 90})
    assert rec["lines"][0] == ("- model: ViT-L-14, weights openai, QuickGELU, text tower locked, image tower locked "
                               "but 6 groups")
    assert rec["lines"][1] == "- 8 rank(s), global batch 8000 (accumulation 1), ddp, precision amp, objective clip"
    assert rec["lines"][3].endswith("integration raw, stage weights equal")
    cka = recipe(load_config(None, ["data.synthetic=true", "model.integration_weights=cka_drop"]), 1, {})
    assert cka["lines"][3].endswith("integration normalized, stage weights cka_drop")
    assert rec["rows"][0] == ["0", "pretrained openai", "–", "–", "–", "–", "–"]
    group = cfg.stages[1].group_size  # the column shows the config's label group size
    assert rec["rows"][1] == ["1", "base", "100", "800,000", "0.0005", "10", f"{group}"]
    assert rec["rows"][3][2] == "–"  # not trained yet
    write_json({"steps": {"stage_1/train": {"status": "done", "started_at": 100.0, "finished_at": 110.0},
                          "stage_1/embed": {"status": "done", "started_at": 90.0, "finished_at": 94.0},
                          "report": {"status": "running", "started_at": 111.0}}}, str(tmp_path / "manifest.json"))
    write_json({"usable": 2000}, str(tmp_path / "data_check.json"))
    metrics = {1: [{"step": 5, "samples_per_s": 300.0}, {"step": 10, "samples_per_s": 500.0}]}
    rows = step_times(str(tmp_path), metrics, 64)
    assert rows == [["stage_1/embed", "4.0 s", "500"], ["stage_1/train", "10.0 s", "64 (logged steps 400)"]]
    text = open(write_report(str(tmp_path), {}, {}, {}, {}, rec, rows)).read()
    assert "## Recipe" in text and f"| 1 | base | 100 | 800,000 | 0.0005 | 10 | {group} |" in text
    assert "| stage_1/train | 10.0 s | 64 (logged steps 400) |" in text


def test_the_recipe_shows_the_precision_the_run_used():
    """train.precision auto is shown as what the trained stages recorded (amp_bf16 on GPUs), and as
    unresolved, saying so, only when no stage recorded one."""
    from mcl_dist.config.load import load_config
    from mcl_dist.training.optim import resolve_precision
    import torch

    cfg = load_config(None, ["data.synthetic=true", "train.precision=auto"])
    assert resolve_precision("auto", torch.device("cuda")) == "amp_bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert "precision amp_bf16 (train.precision auto)," in recipe(cfg, 8, {}, {"amp_bf16"})["lines"][1]
    assert "precision fp32 (train.precision auto)," in recipe(cfg, 1, {}, {"fp32"})["lines"][1]
    assert "precision auto (no trained stage recorded" in recipe(cfg, 1, {})["lines"][1]
