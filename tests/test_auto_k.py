"""stages.N.k: auto (mcl_dist/clustering/auto_k.py): the rule finds the true cluster count of data that has
one, and the config refuses bad rule settings when it loads."""
import pytest
import torch

from mcl_dist.clustering.auto_k import choose_k
from mcl_dist.config.load import load_config
from mcl_dist.config.schema import ConfigError


def blobs(n_clusters: int, per: int = 60, dim: int = 32, noise: float = 0.15, seed: int = 0) -> torch.Tensor:
    """Unit vectors around n_clusters random directions (what normalised embeddings look like)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(n_clusters, dim, generator=g), dim=1)
    x = centers.repeat_interleave(per, 0) + noise * torch.randn(n_clusters * per, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


@pytest.mark.parametrize("true_k", [6, 12, 24])
def test_spread_rule_finds_the_true_cluster_count(true_k):
    x = blobs(true_k)
    res, rule = choose_k(x, [3, 6, 12, 24, 48], 0.1, iters=30, seed=0, spherical=True)
    assert rule["chosen"] == true_k == res.centroids.shape[0] == int(res.assignments.max()) + 1
    assert rule["capped"] is False
    curve = {p["k"]: p for p in rule["curve"]}
    assert curve[true_k]["gain"] < 0.1 <= min(p["gain"] for p in rule["curve"] if p["k"] < true_k)
    assert [p["k"] for p in rule["curve"]] == [k for k in [3, 6, 12, 24, 48] if k <= 2 * true_k]  # stops early


def test_no_structure_keeps_gaining_until_the_largest_candidate_then_keeps_it():
    x = torch.nn.functional.normalize(torch.randn(400, 2, generator=torch.Generator().manual_seed(1)), dim=1)
    _, rule = choose_k(x, [2, 4, 8], 0.1, iters=30, seed=0, spherical=True)  # a circle: halving always gains a lot
    assert rule["chosen"] == 8 and rule["curve"][-1]["gain"] is None and rule["capped"] is True


def test_candidates_above_the_row_count_are_skipped():
    res, rule = choose_k(blobs(3, per=4), [2, 8, 64], 0.1, iters=10, seed=0, spherical=True)
    assert [p["k"] for p in rule["curve"]] == [2, 8] and rule["chosen"] in (2, 8)


def test_config_accepts_auto_and_refuses_bad_settings():
    cfg = load_config(None, ["data.synthetic=true", "stages=[{}, {k: auto}, {k: 16}]"])
    assert cfg.stages[1].k == "auto" and cfg.stages[2].k == 16 and cfg.cluster.k_rule == "spread"
    bad = {"stages=[{}, {k: 3.5}]": "'stages.1.k' must be int or str, got float 3.5",
           "stages=[{}, {k: many}]": "'stages.1.k' must be an int >= 2 or 'auto', got 'many'",
           "cluster.k_candidates=[16, 8]": "'cluster.k_candidates' must be two or more increasing ints >= 2",
           "cluster.k_min_gain=1.5": "'cluster.k_min_gain' must be in (0, 1), got 1.5",
           "cluster.k_rule=elbow": "'cluster.k_rule' must be one of spread, got 'elbow'"}
    for override, msg in bad.items():
        with pytest.raises(ConfigError) as e:
            load_config(None, ["data.synthetic=true", override])
        assert msg in str(e.value), (override, str(e.value))


def test_fixed_k_fingerprint_unchanged_and_auto_records_the_rule():
    from mcl_dist.steps import KMeansStep
    fixed = KMeansStep(load_config(None, ["data.synthetic=true", "stages=[{}, {k: 32}]"]), stage=1).result_settings()
    assert "k_rule" not in fixed and fixed["k"] == 32
    auto = KMeansStep(load_config(None, ["data.synthetic=true", "stages=[{}, {k: auto}]",
                                         "cluster.k_candidates=[4, 8]"]), stage=1).result_settings()
    assert auto["k_rule"] == {"rule": "spread", "candidates": [4, 8], "min_gain": 0.1}
