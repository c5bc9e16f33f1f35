"""Pair scores of one finished benchmark run, per pair, on the validation and the test pair sets,
for every stage and every label-free integration rule (tools/bench_feature_suppression.py calls
`score_run` once a run has finished; the record keeps the per-pair outcomes, so the report can
bootstrap intervals and choose rules without the run directory).

Why here and not in the pipeline's eval: every integration rule below is a function of the stages'
features, so one pass over the pair images and statements per stage scores all of them (a pipeline
re-integration costs ~65 s per rule and seed), and the outcome of each pair is kept.

Per stage s the features of: the pair images and statements of every pair set (validation and
test: each split has >= 2 independently generated sets), the held-out images and captions of the
validation shards (the retrieval rules; captions only, never the attribute labels) and the first
training images and captions (the whitening statistics). Cached in <run>/pairfeats/stage_<s>.npz.

Integration rules (model.integration_weights / model.integration in the pipeline do `equal`):
    equal        every stage, each L2-normalised, concatenated: the paper's integration
    last         the last stage alone (what the integrated model must not fall below)
    first_last   stage 0 and the last stage only
    whiten       every stage whitened (ZCA, training-image and caption statistics), then `equal`
    retr_subset  the subset of stages (stage 0 always in) whose `equal` integration retrieves the
                 held-out captions best among hard negatives: for each held-out image its own
                 caption and the 15 captions sharing the most words with it (captions only)
    retr_whiten  the same choice among the whitened stages
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import tarfile

import numpy as np

RULES = ("equal", "last", "first_last", "whiten", "retr_subset", "retr_whiten")
HARD_NEGATIVES = 15
N_HELD_OUT = 1024
N_TRAIN_STATS = 2048
PREFIX = "a photo of "  # as mcl_dist/eval/mmvp.py scores the statements


def read_shard_samples(pattern_paths: list[str], n: int) -> tuple[list, list[str]]:
    """The first n (PIL image, caption) of the shards, in shard order."""
    from PIL import Image

    imgs, caps = [], []
    for path in pattern_paths:
        with tarfile.open(path) as tar:
            by_key: dict = {}
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                by_key.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key in sorted(by_key):
            imgs.append(Image.open(io.BytesIO(by_key[key]["png"])).convert("RGB"))
            caps.append(by_key[key]["txt"].decode())
            if len(imgs) == n:
                return imgs, caps
    return imgs, caps


def expand(pattern: str) -> list[str]:
    """`dir/train-{00000..00007}.tar` -> the shard paths."""
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def pair_sets(data: dict) -> dict:
    """{split: [pair folder, ...]} of the run's data (bench_suppression_arms.make_data)."""
    return {split: data[f"pairs_{split}"] for split in ("val", "test")}


def _encode(model, preprocess, tokenizer, images, texts, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    import torch

    fi, ft = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            fi.append(model.encode_image(torch.stack([preprocess(x) for x in images[i:i + batch]]),
                                         normalize=True).float().numpy())
        for i in range(0, len(texts), batch):
            ft.append(model.encode_text(tokenizer(texts[i:i + batch]), normalize=True).float().numpy())
    return np.concatenate(fi), np.concatenate(ft)


def pair_inputs(folder: str) -> tuple[list, list[str], list[str]]:
    """(images [2 per pair], statements [2 per pair], category per pair) of one pair folder."""
    from mcl_dist.eval.mmvp import _load, read_pairs

    pairs = read_pairs(folder)
    return ([_load(p) for pr in pairs for p in pr["images"]], [PREFIX + s for pr in pairs for s in pr["statements"]],
            [pr["category"] for pr in pairs])


def stage_features(run_dir: str, s: int, data: dict) -> dict:
    """Stage s's features (module docstring), cached beside the run."""
    cache = os.path.join(run_dir, "pairfeats", f"stage_{s}.npz")
    if os.path.exists(cache):
        return dict(np.load(cache, allow_pickle=False))
    import torch

    from mcl_dist.core.files import atomic_path
    from mcl_dist.integration.integrated_model import load_model

    torch.manual_seed(0)
    model, preprocess, tokenizer = load_model(os.path.join(run_dir, f"stage_{s}", "checkpoint.pt"))
    model.eval()
    out = {}
    for split, folders in pair_sets(data).items():
        for j, folder in enumerate(folders):
            imgs, texts, cats = pair_inputs(folder)
            fi, ft = _encode(model, preprocess, tokenizer, imgs, texts)
            out[f"{split}{j}_img"], out[f"{split}{j}_txt"] = fi.reshape(-1, 2, fi.shape[-1]), ft.reshape(-1, 2, ft.shape[-1])
            out[f"{split}{j}_cat"] = np.array(cats)
    for name, pattern, n in (("held", data["val"], N_HELD_OUT), ("train", data["train"], N_TRAIN_STATS)):
        imgs, caps = read_shard_samples(expand(pattern), n)
        out[f"{name}_img"], out[f"{name}_txt"] = _encode(model, preprocess, tokenizer, imgs, caps)
        if name == "held":
            out["held_caps"] = np.array(caps)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **out)
    return out


# -- integration rules --------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def whitener(f: dict) -> tuple[np.ndarray, np.ndarray]:
    """(mean, ZCA matrix) from a stage's training image and caption features together: one metric
    for both towers, so image-text similarities stay comparable."""
    x = np.concatenate([f["train_img"], f["train_txt"]]).astype(np.float64)
    mu = x.mean(0)
    vals, vecs = np.linalg.eigh(np.cov(x - mu, rowvar=False))
    return mu, vecs @ np.diag(1.0 / np.sqrt(np.maximum(vals, 1e-6 * vals.max()))) @ vecs.T


def transform(feats: list[dict], whiten: bool) -> list:
    """Per stage, the map applied to its (unit) features before concatenation."""
    if not whiten:
        return [lambda x: _unit(x)] * len(feats)
    maps = []
    for f in feats:
        mu, w = whitener(f)
        maps.append(lambda x, mu=mu, w=w: _unit((x - mu) @ w))
    return maps


def integrate(feats: list[dict], key: str, subset: tuple, maps: list) -> np.ndarray:
    """The integrated (unit) features of `key` over the stages in `subset`, equal weights."""
    return _unit(np.concatenate([maps[s](feats[s][key].astype(np.float64)) for s in subset], axis=-1))


def hard_negative_sets(captions: list[str], k: int = HARD_NEGATIVES) -> np.ndarray:
    """Per held-out caption, its own index then the k captions sharing the most words with it
    (ties: the earlier index): candidate sets that differ from the truth in few words."""
    vocab = sorted({w for c in captions for w in c.lower().replace(".", " ").split()})
    index = {w: i for i, w in enumerate(vocab)}
    bag = np.zeros((len(captions), len(vocab)), np.float32)
    for i, c in enumerate(captions):
        for w in set(c.lower().replace(".", " ").split()):
            bag[i, index[w]] = 1
    overlap = bag @ bag.T
    np.fill_diagonal(overlap, -1)
    order = np.argsort(-overlap, axis=1, kind="stable")[:, :k]
    return np.concatenate([np.arange(len(captions))[:, None], order], axis=1)


def retrieval(img: np.ndarray, txt: np.ndarray, sets: np.ndarray) -> float:
    """Share of held-out images whose own caption is the most similar among its candidate set."""
    sims = np.einsum("nd,nkd->nk", img, txt[sets])
    return float((sims.argmax(1) == 0).mean())


def choose_subset(feats: list[dict], maps: list, sets: np.ndarray) -> tuple[tuple, dict]:
    """The stage subset (stage 0 always in) with the best held-out hard-negative retrieval; ties
    go to the subset with more stages (the paper's default is all of them)."""
    n, scores = len(feats), {}
    for r in range(n):
        for rest in itertools.combinations(range(1, n), r):
            sub = (0,) + rest
            scores[sub] = retrieval(integrate(feats, "held_img", sub, maps), integrate(feats, "held_txt", sub, maps), sets)
    best = max(scores, key=lambda sub: (round(scores[sub], 6), len(sub)))
    return best, {"-".join(map(str, k)): v for k, v in scores.items()}


def pair_outcomes(feats: list[dict], prefix: str, subset: tuple, maps: list) -> np.ndarray:
    """1 where both statements of a pair pick their own image (mcl_dist/eval/mmvp.py's rule)."""
    fi, ft = integrate(feats, prefix + "_img", subset, maps), integrate(feats, prefix + "_txt", subset, maps)
    s = np.einsum("ptd,pid->pti", ft, fi)
    pred0, pred1 = np.where(s[:, 0, 0] > s[:, 0, 1], 0, 1), np.where(s[:, 1, 0] > s[:, 1, 1], 0, 1)
    return ((pred0 == 0) & (pred1 == 1)).astype(np.int8)


def score_run(run_dir: str, data: dict, n_stages: int) -> dict:
    """{"pairs": {split: {model: {attr: "0110..."}}}, "rules": {rule: {"stages", "retrieval"}},
    "stage_retrieval": [...]}; models are stage_<s> and integ:<rule> (pairs of set 0, then set 1)."""
    feats = [stage_features(run_dir, s, data) for s in range(n_stages)]
    sets = hard_negative_sets([str(c) for c in feats[0]["held_caps"]])
    plain, white = transform(feats, False), transform(feats, True)
    last = (n_stages - 1,)
    rules = {"equal": (tuple(range(n_stages)), plain), "last": (last, plain), "first_last": (tuple(sorted({0, *last})), plain),
             "whiten": (tuple(range(n_stages)), white)}
    info = {}
    for name, maps in (("retr_subset", plain), ("retr_whiten", white)):
        sub, scores = choose_subset(feats, maps, sets)
        rules[name] = (sub, maps)
        info[name] = {"stages": list(sub), "retrieval": scores}
    for name, (sub, _) in rules.items():
        info.setdefault(name, {"stages": list(sub)})
    models = {f"stage_{s}": ((s,), plain) for s in range(n_stages)}
    models.update({f"integ:{r}": v for r, v in rules.items()})
    out = {}
    for split in ("val", "test"):
        n_sets = sum(1 for k in feats[0] if k.startswith(split) and k.endswith("_cat"))
        cats = np.concatenate([feats[0][f"{split}{j}_cat"] for j in range(n_sets)])
        for model, (sub, maps) in models.items():
            ok = np.concatenate([pair_outcomes(feats, f"{split}{j}", sub, maps) for j in range(n_sets)])
            out.setdefault(split, {})[model] = {str(a): "".join(map(str, ok[cats == a])) for a in dict.fromkeys(cats)}
        out[split]["_sets"] = n_sets
    stage_ret = [retrieval(_unit(f["held_img"]), _unit(f["held_txt"]), sets) for f in feats]
    return {"pairs": out, "rules": info, "stage_retrieval": stage_ret}


# -- intervals ----------------------------------------------------------------------------------
def outcomes(rec: dict, split: str, model: str, attrs: list[str]) -> list[np.ndarray]:
    return [np.frombuffer(rec["pairs"][split][model][a].encode(), np.uint8) - ord("0") for a in attrs]


def pair_ratio(mcl: list[np.ndarray], base: list[np.ndarray], n_boot: int = 2000, seed: int = 0) -> tuple:
    """(ratio, lo, hi): pair error on the attributes (mean over attributes) of one model over the
    baseline's on the same pairs, with the 95% percentile interval of a paired bootstrap over pairs
    (resampled within each attribute; the same draw for both models)."""
    def err(x):
        return np.mean([1 - v.mean() for v in x])

    point = err(mcl) / err(base) if err(base) > 0 else float("inf")
    rng = np.random.default_rng(seed)
    num, den = np.zeros(n_boot), np.zeros(n_boot)
    for m, b in zip(mcl, base):
        idx = rng.integers(0, len(m), (n_boot, len(m)))
        num += 1 - m[idx].mean(1)
        den += 1 - b[idx].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.where(den > 0, num / den, np.inf)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def accuracy_diff(a: list[np.ndarray], b: list[np.ndarray], n_boot: int = 2000, seed: int = 0) -> tuple:
    """(mean pair accuracy of a - of b over the attributes, lo, hi), paired bootstrap over pairs."""
    point = float(np.mean([x.mean() - y.mean() for x, y in zip(a, b)]))
    rng = np.random.default_rng(seed)
    tot = np.zeros(n_boot)
    for x, y in zip(a, b):
        idx = rng.integers(0, len(x), (n_boot, len(x)))
        tot += x[idx].mean(1) - y[idx].mean(1)
    lo, hi = np.percentile(tot / len(a), [2.5, 97.5])
    return point, float(lo), float(hi)


# -- provenance ---------------------------------------------------------------------------------
def digest_paths(paths: list[str]) -> str:
    """sha256 over every file under the paths (names relative to each path, then bytes), in order."""
    h = hashlib.sha256()
    for root in paths:
        files = [root] if os.path.isfile(root) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
        for f in files:
            h.update(os.path.relpath(f, os.path.dirname(root) if os.path.isfile(root) else root).encode())
            with open(f, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def provenance(root: str) -> dict:
    """The commit (and whether the tracked tree differs from it) and the versions that render the
    data and train the models."""
    import subprocess

    def git(*a):
        return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()

    versions = {}
    for mod in ("torch", "numpy", "PIL", "open_clip"):
        try:
            versions[mod if mod != "PIL" else "Pillow"] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - a missing package is recorded, not fatal
            versions[mod] = f"unavailable ({type(e).__name__})"
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "versions": versions}


if __name__ == "__main__":  # python tools/bench_suppression_pairs.py RUN_DIR DATA_JSON N_STAGES
    import sys

    print(json.dumps(score_run(sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3]))["rules"], indent=1))
