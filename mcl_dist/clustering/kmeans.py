"""Distributed k-means (Lloyd) over the ranks' shares of an embedding matrix.

Every rank holds only its own rows (global order: rank 0's rows, then rank 1's, ...). Centroids
are identical everywhere; each pass assigns the local rows chunk by chunk (torch matmul with
||c||^2 - 2 x.c, or faiss) and all-reduces one float64 buffer of per-cluster sums, counts and the
inertia. Nothing needs the whole matrix on one device. Rows that provably keep their cluster
(a bound on the distance to every other centroid, as in Hamerly's algorithm) skip the search,
so late iterations cost a fraction of the first ones without changing the result. Seeded runs
give the same centroids and assignments on 1 or on N ranks: the init sample is drawn by global
index and the sums are reduced in float64, so only the summation order (far below float32
resolution) differs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from mcl_dist.config.origins import blame
from mcl_dist.config.registry import Choice
from mcl_dist.config.schema import Config, ConfigError
from mcl_dist.core import distributed as mdist
from mcl_dist.core.progress import progress


@dataclass
class KMeansResult:
    centroids: torch.Tensor      # (K, D) float32, CPU, identical on every rank
    assignments: torch.Tensor    # (N_local,) int64, CPU: this rank's rows only
    inertia: list[float]         # global objective per assignment pass; the last is the result's
    sizes: torch.Tensor          # (K,) int64 global cluster sizes
    iterations: int              # centroid updates done (len(inertia) == iterations + 1)
    converged: bool


def _comm(t: torch.Tensor, op: str) -> torch.Tensor:
    """all_reduce (sum) or all_gather (concat dim 0) on the device the process group needs."""
    if not mdist.is_distributed():
        return t
    home = t.device
    t = t.to(mdist.comm_device())
    out = mdist.all_reduce_sum(t) if op == "sum" else mdist.gather_no_grad(t)
    return out.to(home)


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(s + size, n)


def _default_sample(n: int, k: int) -> int:
    # k-means++ needs only a few dozen points per cluster to seed well; every rank holds the
    # gathered sample and k-means++ costs O(sample * k), so 64 per cluster (at least 10,000).
    return min(n, max(64 * k, 10_000))


def _sample_indices(n: int, s: int, g: torch.Generator) -> torch.Tensor:
    """`s` distinct sorted global row indices, a function of (n, s, seed) only."""
    if s >= n:
        return torch.arange(n)
    if n <= 1 << 24:
        return torch.randperm(n, generator=g)[:s].sort().values
    picked = torch.empty(0, dtype=torch.long)  # huge n: avoid a randperm of n
    while picked.numel() < s:
        picked = torch.cat([picked, torch.randint(n, (2 * s,), generator=g)]).unique()
    return picked[torch.randperm(picked.numel(), generator=g)[:s]].sort().values


def _gather_rows(x, gidx, offset, device) -> torch.Tensor:
    """The rows of global indices `gidx` on every rank: each fills its own, zeros elsewhere, and
    a sum-reduce (adding exact zeros) assembles them bit-exactly."""
    out = torch.zeros(len(gidx), x.shape[1], dtype=torch.float32)
    mine = (gidx >= offset) & (gidx < offset + x.shape[0])
    out[mine] = x[gidx[mine] - offset].float().cpu()
    return _comm(out, "sum").to(device)


def _resident(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The pipeline hands k-means a host copy of the embeddings; on a GPU, each pass would copy
    it over PCIe again (10M x 768 fp16: 15 GB a pass). Copy it once when it takes under half of
    the free device memory."""
    if device.type != "cuda" or x.device.type != "cpu":
        return x
    free, _ = torch.cuda.mem_get_info(device)
    return x.to(device) if x.numel() * x.element_size() < free // 2 else x


def _normalise(c: torch.Tensor) -> torch.Tensor:
    return c / c.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _kmeans_pp(s: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Greedy k-means++: per step, draw a few D^2-weighted candidates and keep the one that
    lowers the sample's potential most. Twice scikit-learn's 2 + ln k trials: on separated
    blobs it leaves about half as many true clusters unseeded. Deterministic given `g`."""
    n, trials = s.shape[0], 2 + int(2 * math.log(k))
    ss = (s * s).sum(1)
    chosen = [int(torch.randint(n, (1,), generator=g))]
    d = (ss - 2 * s @ s[chosen[0]] + ss[chosen[0]]).clamp_min(0)
    for _ in range(1, k):
        cum = d.double().cumsum(0)
        r = torch.rand(trials, generator=g, dtype=torch.float64).to(s.device) * cum[-1]
        cand = torch.searchsorted(cum, r).clamp_max(n - 1)
        if float(cum[-1]) <= 0:  # fewer distinct points than k: any point will do
            cand = torch.randint(n, (trials,), generator=g).to(s.device)
        dc = (ss[:, None] - 2 * s @ s[cand].T + ss[cand][None]).clamp_min(0)
        newd = torch.minimum(d[:, None], dc)
        best = int(newd.double().sum(0).argmin())
        chosen.append(int(cand[best]))
        d = newd[:, best].contiguous()
    return s[chosen]


def _init(x, k, init, init_sample, seed, spherical, offset, n, dim, device) -> torch.Tensor:
    if isinstance(init, torch.Tensor):
        if tuple(init.shape) != (k, dim):
            raise ValueError(f"init centroids have shape {tuple(init.shape)}, expected ({k}, {dim})")
        if not torch.isfinite(init).all():
            raise ValueError("init centroids contain NaN or inf")
        c = init.detach().to(device, torch.float32).clone()
        return _normalise(c) if spherical else c
    if init not in ("kmeans++", "random"):
        raise ValueError(f"init must be 'kmeans++', 'random' or a (k, D) tensor, got {init!r}")
    g = torch.Generator().manual_seed(seed)
    size = k if init == "random" else max(k, min(n, init_sample or _default_sample(n, k)))
    sample = _gather_rows(x, _sample_indices(n, size, g), offset, device)
    if spherical:
        sample = _normalise(sample)
    c = sample if init == "random" else _kmeans_pp(sample, k, g)
    return _normalise(c) if spherical else c


def _check(x, k, spherical, device, chunk):
    """One pass over the local rows: per-row squared norms (Euclidean) or inverse norms
    (spherical), plus global sizes and bad-row counts. Every rank raises the same error."""
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a 2-D float tensor (N_local, D), got {x.dim()}-D {x.dtype}")
    aux = torch.empty(x.shape[0], device=device)
    bad = zero = 0
    for s, e in _chunks(x.shape[0], chunk):
        norm = torch.linalg.vector_norm(x[s:e].to(device).float(), dim=1)
        bad += int((~torch.isfinite(norm)).sum())
        zero += int((norm == 0).sum())
        aux[s:e] = 1.0 / norm if spherical else norm * norm
    stats = _comm(torch.tensor([[x.shape[0], x.shape[1], bad, zero]], dtype=torch.long), "gather")
    sizes, dims = stats[:, 0], stats[:, 1]
    n, bad, zero = int(sizes.sum()), int(stats[:, 2].sum()), int(stats[:, 3].sum())
    if n == 0:
        raise ValueError("k-means got no rows: the shards of all ranks are empty")
    if len(set(dims[sizes > 0].tolist())) > 1:
        raise ValueError(f"embedding dimension differs across ranks: {dims.tolist()}")
    if bad:
        raise ValueError(f"{bad} of {n} rows contain NaN or inf (or overflow float32): "
                         "the embeddings are broken; re-embed with a healthy checkpoint")
    if spherical and zero:
        raise ValueError(f"{zero} of {n} rows are all zero: cannot normalise them for spherical k-means")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of rows ({n}), got k={k}")
    offset = int(sizes[: mdist.rank()].sum())
    return aux, n, offset, int(dims[sizes > 0][0])


def _check_faiss(cfg: Config, where: str) -> None:
    try:
        import faiss  # noqa: F401  (optional: the faiss extra)
    except ImportError as e:
        raise ConfigError(f"{blame(where, 'cluster.backend')}: cluster.backend=faiss needs faiss, which is not importable ({e}); "
                          f"pip install -e .[faiss] (faiss-gpu for CUDA), or use cluster.backend=torch") from None


# `cluster.backend`: the nearest-centroid search (_Search)
BACKENDS = {"torch": Choice(), "faiss": Choice(check=_check_faiss)}


class _Search:
    """Nearest and second-nearest centroid of a block of rows, as squared distances."""

    def __init__(self, backend, c, device, chunk):
        self.cc = (c * c).sum(1)
        if backend == "torch":
            self.ct, self.buf = c.T, torch.empty(chunk, c.shape[0], device=device)
        elif backend == "faiss":
            self.index, self.gpu_res = _faiss_index(c, device)
        else:
            raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")

    def __call__(self, xc, xx):
        if not hasattr(self, "ct"):
            d, i = self.index.search(xc, 2)  # k=1: faiss pads the second with +inf
            return i[:, 0], d[:, 0], d[:, 1]
        buf = self.buf[: xc.shape[0]]  # ||x||^2 is constant per row: rank by ||c||^2 - 2 x.c
        torch.addmm(self.cc, xc, self.ct, beta=1, alpha=-2, out=buf)
        d1, lab = buf.min(1)
        d2 = buf.scatter_(1, lab[:, None], math.inf).amin(1)  # amin is vectorised, min(1) is not
        return lab, d1 + xx, d2 + xx


def _faiss_index(c, device):
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401  (lets faiss search torch tensors in place)
    except ImportError as e:
        raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu (or faiss-gpu for CUDA)") from e
    index, res = faiss.IndexFlatL2(c.shape[1]), None
    if device.type == "cuda":
        if not hasattr(faiss, "StandardGpuResources"):
            raise ImportError("backend='faiss' on a CUDA device needs faiss-gpu (pip install faiss-gpu)")
        res = faiss.StandardGpuResources()  # must outlive the GPU index: kept with it
        index = faiss.index_cpu_to_gpu(res, device.index or 0, index)
    index.add(c)
    return index, res


def _pass(x, aux, c, st, spherical, backend, device, chunk, prune, want_sums):
    """Assign all local rows (updating st.lab, st.sq, st.low in place); return the all-reduced
    float64 [sums (K*D) | counts (K) | inertia].

    Exact Hamerly-style skipping: st.low is a lower bound on each row's distance to every
    centroid but its own. A row whose exact distance to its own centroid (a cheap row-wise dot)
    stays below that bound, with a margin for float32 rounding, keeps its label without a search.
    Spherical rows and centroids are unit vectors, so squared distance = 2 - 2 cos."""
    k, dim = c.shape
    search = _Search(backend, c, device, chunk)
    sums, part = torch.zeros(k, dim, dtype=torch.float64, device=device), torch.empty(k, dim, device=device)
    gbuf = torch.empty(min(chunk, x.shape[0]) if prune else 0, dim, device=device)
    for s, e in _chunks(x.shape[0], chunk):
        xc = x[s:e].to(device).float().contiguous()  # cast on the device; a view for float32 on it
        xc, xx = (xc * aux[s:e, None], 1.0) if spherical else (xc, aux[s:e])
        lab, sq, low = st.lab[s:e], st.sq[s:e], st.low[s:e]
        rows = None
        if prune:  # index_select into a buffer: 10x faster than c[lab] on CPU
            cc, own = search.cc[lab], torch.index_select(c, 0, lab, out=gbuf[: e - s])
            torch.add(xx + cc, own.mul_(xc).sum(1), alpha=-2, out=sq)
            rows = (sq + 1e-5 * (xx + cc) >= low.clamp_min(0).square()).nonzero().flatten()
        if rows is None or 2 * len(rows) > len(xc):  # most rows need a search: search them all
            lab[:], sq[:], d2 = search(xc, xx)
            low.copy_(d2.clamp_min(0).sqrt())
        elif len(rows):
            lab[rows], sq[rows], d2 = search(xc[rows], xx if spherical else xx[rows])
            low[rows] = d2.clamp_min(0).sqrt()
        sq.clamp_min_(0)
        if want_sums:  # float32 partial per chunk (fast), accumulated in float64 (reproducible)
            sums += part.zero_().index_add_(0, lab, xc)
    counts = torch.bincount(st.lab, minlength=k).to(torch.float64)
    inertia = st.sq.sum(dtype=torch.float64).reshape(1) * (0.5 if spherical else 1.0)
    return _comm(torch.cat([sums.flatten(), counts, inertia]), "sum")


def _farthest(x, aux, sq, m, offset, spherical, device) -> torch.Tensor:
    """The m rows farthest from their centroid across all ranks (ties: lower global index)."""
    order = torch.sort(sq, descending=True, stable=True).indices[:m].cpu()
    cand = torch.full((m, 2 + x.shape[1]), -math.inf, dtype=torch.float64)  # padding never wins
    cand[:, 1] = math.inf
    cand[: len(order), 0] = sq[order.to(sq.device)].double().cpu()
    cand[: len(order), 1] = (order + offset).double()
    rows = x[order].to(device, torch.float32)
    cand[: len(order), 2:] = (rows * aux[order.to(aux.device), None] if spherical else rows).double().cpu()
    cand = _comm(cand, "gather")
    cand = cand[torch.sort(cand[:, 1]).indices]  # by global index, then stably by distance
    cand = cand[torch.sort(cand[:, 0], descending=True, stable=True).indices[:m]]
    return cand[:, 2:].float().to(device)


def _progress(iters, enabled):
    if not (enabled and mdist.rank() == 0):
        return None
    return progress(iters, desc="k-means", unit="it")


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, *, iters: int = 20, tol: float = 1e-4, seed: int = 0,
           spherical: bool = False, init: str | torch.Tensor = "kmeans++", init_sample: int = 0,
           chunk_size: int = 262144, backend: str = "torch", device: str | torch.device | None = None,
           progress: bool = False, on_iter=None) -> KMeansResult:
    """Lloyd's k-means over all ranks' rows (see the module docstring).

    init_sample=0 samples min(N, max(64 k, 10000)) rows for k-means++. Stops after `iters`
    centroid updates or when the inertia drops by less than `tol` (relative); tol=0 always runs
    `iters`. Empty clusters are re-seeded with the rows farthest from their centroid. Memory
    beyond x: O(N_local) per-row state plus one chunk x K score block.

    chunk_size: rows per block on a GPU. The loop launches ~20 small kernels per block, so small
    blocks leave an H200 waiting on the host: 2M x 512 fp16, K=100, 20 iterations took 0.40 s
    with 262144 rows and 0.54-0.83 s with 65536 (a float64 one-hot matmul for the cluster sums
    instead of index_add_ was slower: 0.47-0.69 s). On a CPU, blocks are cut to ~4 MB.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chunk = max(1, int(chunk_size))
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    x = _resident(x, device)
    aux, n, offset, dim = _check(x, k, spherical, device, chunk)
    if device.type == "cpu":  # ~4 MB blocks stay in cache between the matmul, min and sums
        chunk = min(chunk, max(256, (1 << 20) // dim))
    else:  # each float32 block (rows x D, rows x K scores) stays under ~512 MB, even for a large K
        chunk = min(chunk, max(4096, (128 << 20) // max(k, dim)))
    c = _init(x, k, init, init_sample, seed, spherical, offset, n, dim, device)
    n_local = x.shape[0]
    st = SimpleNamespace(lab=torch.zeros(n_local, dtype=torch.long, device=device),
                         sq=torch.empty(n_local, device=device), low=torch.empty(n_local, device=device))
    inertia, converged, it, bar = [], False, 0, _progress(iters, progress)
    while True:
        red = _pass(x, aux, c, st, spherical, backend, device, chunk, prune=len(inertia) > 0, want_sums=it < iters)
        sums, counts = red[: k * dim].view(k, dim), red[k * dim: k * dim + k]
        inertia.append(float(red[-1]))
        empty = (counts == 0).nonzero().flatten()
        if len(inertia) > 1 and not len(empty):
            prev = inertia[-2]
            converged = prev <= 0 or (prev - inertia[-1]) / prev < tol
        converged = converged or inertia[-1] <= 0  # every row on its centroid: nothing to improve
        if converged or it == iters:
            break
        new = sums / counts.clamp_min(1)[:, None]
        new = (_normalise(new) if spherical else new).float()
        if len(empty):
            new[empty] = _farthest(x, aux, st.sq, len(empty), offset, spherical, device)
        st.low -= (new - c).norm(dim=1).max()  # no centroid came closer than its largest move
        c, it = new, it + 1
        if on_iter is not None:  # tests kill the job here (debug.kill_at=stage_s/kmeans:N)
            on_iter(it)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(inertia=f"{inertia[-1]:.6g}")
    if bar is not None:
        bar.close()
    return KMeansResult(centroids=c.cpu(), assignments=st.lab.cpu(), inertia=inertia,
                        sizes=counts.round().long().cpu(), iterations=it, converged=converged)
