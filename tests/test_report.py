"""report.md: a five-line summary, then one table per metric (rows = models, columns = attributes)."""
import re

from mcl_dist.report import write_report


def scores(probe, mmvp_mean, zs=0.5):
    attrs = ("color", "shape", "texture")
    return {"zero_shot": {a: {"top1": zs, "top5": 1.0, "n": 10} for a in attrs},
            "linear_probe": {a: {"top1": p, "n_train": 5} for a, p in zip(attrs, probe)},
            "knn": {a: {"top1": 0.3, "k": 20} for a in attrs},
            "mmvp": {"per_category": {"color": mmvp_mean, "shape": mmvp_mean}, "mean": mmvp_mean, "overall": mmvp_mean}}


def test_summary_and_one_table_per_metric(tmp_path):
    results = {"stage_0": scores((0.9, 0.2, 0.4), 0.30), "stage_1": scores((0.8, 0.5, 0.3), 0.20),
               "stage_2": scores((0.7, 0.4, 0.6), 0.35), "integrated": scores((0.95, 0.55, 0.5), 0.40)}
    text = open(write_report(str(tmp_path), results, {}, {}, {})).read()
    summary = text.split("## Summary\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert summary == [
        "- MMVP mean: stage_0 0.300; best later stage stage_2 0.350 (+0.050); integrated 0.400 (+0.100)",
        "- linear probe top-1 of stage_0: color 0.900, shape 0.200, texture 0.400",
        "- best later stage per attribute: color stage_1 0.800 (-0.100), shape stage_1 0.500 (+0.300), "
        "texture stage_2 0.600 (+0.200)",
        "- integrated vs stage_0: color +0.050, shape +0.350, texture +0.100",
        "- integrated beats stage_0 on 3 of 3 probed attributes"]
    titles = re.findall(r"^### (.+)$", text, re.M)
    assert titles == ["Zero-shot top-1", "Zero-shot top-5", "Linear probe top-1", "k-NN top-1"]
    widths = {line.count("|") - 1 for line in text.splitlines() if line.startswith("| ")}
    assert max(widths) <= 4  # model + 3 attributes (MMVP: model + 2 categories + mean)
    probe = text.split("### Linear probe top-1\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert probe[0] == "| model | color | shape | texture |"
    assert probe[2:] == ["| stage_0 | 0.900 | 0.200 | 0.400 |", "| stage_1 | 0.800 | 0.500 | 0.300 |",
                         "| stage_2 | 0.700 | 0.400 | 0.600 |", "| integrated | 0.950 | 0.550 | 0.500 |"]
    assert "| integrated | 0.400 | 0.400 | 0.400 |" in text  # MMVP row: categories, then the mean


def test_summary_without_mmvp_or_probe_says_so(tmp_path):
    results = {"stage_0": {"zero_shot": {"color": {"top1": 0.5}}}, "integrated": {"zero_shot": {"color": {"top1": 0.6}}}}
    text = open(write_report(str(tmp_path), results, {}, {}, {})).read()
    assert "- MMVP mean: no MMVP results for stage_0" in text
    assert "- linear probe: no per-attribute results for stage_0" in text
