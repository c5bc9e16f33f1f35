"""Synthetic multi-attribute image-caption data (Trifeature-like) for the demo, tests and benchmark.

Each 32x32 image shows small object(s) with independent uniform attributes. EASY ones cover many
pixels, so a CNN sees them at once: `color` (fills the object), `position` (quadrant), `background`
and `frame` colour. HARD ones need real learning: `shape` (drawn small, jittered in place, scale
and rotation, with pixel noise) and `texture` (a pixel-level pattern). `count` (1-4 copies) is
optional. docs/design.md section 7: the baseline suppresses the hard attributes only with MANY easy
combinations (~200 did not suppress, ~1,150 did), so the default has 10 x 4 x 6 x 5 = 1,200.
`SyntheticSpec.no_easy` holds every easy attribute at its first value: the same data without the
shortcut, i.e. how well the hard attributes are learned without suppression.

Layout written by `ensure_demo_data(root)`:
    root/train-{00000..N}.tar  root/test-{00000..M}.tar   webdataset shards, img2dataset layout:
        {key}.png, {key}.txt (caption), {key}.json ({"color": "red", "color_id": 0, ...});
        key = {split}{seed}_{index:08d}; `{split}.manifest.json` records the parameters (resume)
    root/zero_shot.json   {attribute: {"classnames": [...], "templates": [...]}} (eval.zero_shot_classes)
    root/mmvp/            MMVP-VLM format (tsb0601/MMVP, scripts/evaluate_vlm.py):
        Questions.csv             header "Question ID,Type,Statement"; rows 2k+1, 2k+2 are a pair
        MLLM_VLM Images/<Type>/<qid>.jpg   Type = attribute name; the odd qid's statement describes
                                  the odd qid's image; both images identical (same jitter and noise)
                                  except for that attribute, statements differ only in its words
        attributes.json           {qid: attribute record} (not in the release; for checks)
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw

from mcl_dist.core.files import atomic_path, read_json, write_json, write_text
from mcl_dist.core.progress import progress as progress_bar

PALETTE = {  # one table, so that colour, background and frame words can never collide (checked)
    "red": (220, 30, 30), "orange": (245, 130, 20), "yellow": (240, 225, 30), "green": (40, 170, 60),
    "cyan": (40, 215, 225), "blue": (35, 70, 230), "purple": (140, 50, 200), "pink": (245, 140, 190),
    "white": (245, 245, 245), "brown": (175, 105, 50), "black": (0, 0, 0), "gray": (105, 105, 105),
    "navy": (15, 20, 85), "maroon": (85, 10, 25), "olive": (85, 90, 20), "teal": (5, 80, 85),
    "beige": (230, 210, 165), "lavender": (185, 165, 235), "mint": (165, 235, 195),
    "salmon": (245, 155, 125), "silver": (190, 195, 205), "magenta": (230, 30, 200), "lime": (170, 240, 40),
}


def _poly(*pts) -> np.ndarray:
    v = np.asarray(pts, np.float64)
    return v / np.abs(v).max()  # unit half-size: every shape spans about the same box


def _ngon(k: int, start: float = -90.0, radii=(1.0,)) -> np.ndarray:
    a = np.deg2rad(start + np.arange(k) * 360.0 / k)
    r = np.resize(np.asarray(radii), k)
    return _poly(*np.stack([r * np.cos(a), r * np.sin(a)], 1))


_t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
SHAPES = {  # y points down; all star-shaped about (0, 0), so a scaled copy cuts a clean hole (hollow)
    "circle": _ngon(32), "square": _ngon(4, 45), "triangle": _ngon(3), "diamond": _ngon(4, 0),
    "cross": _poly((-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1), (-.3, 1),
                   (-.3, .3), (-1, .3), (-1, -.3), (-.3, -.3)),
    "star": _ngon(10, radii=(1.0, 0.45)), "pentagon": _ngon(5), "hexagon": _ngon(6), "octagon": _ngon(8),
    "heart": _poly(*np.stack([16 * np.sin(_t) ** 3, -(13 * np.cos(_t) - 5 * np.cos(2 * _t) - 2 * np.cos(3 * _t)
                                                        - np.cos(4 * _t)) - 2.5], 1)),
    "semicircle": _poly(*[(np.cos(a), 0.5 - np.sin(a)) for a in np.linspace(0, np.pi, 17)]),
    "trapezoid": _poly((-1, .7), (1, .7), (.45, -.7), (-.45, -.7)),
    "bowtie": _poly((-1, -.8), (0, -.15), (1, -.8), (1, .8), (0, .15), (-1, .8)),
    "arrow": _poly((0, -1), (.8, -.1), (.3, -.1), (.3, 1), (-.3, 1), (-.3, -.1), (-.8, -.1)),
}
TEXTURES = ("solid", "striped", "checkered", "dotted", "hollow")
POSITIONS = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}
COUNTS = ("one", "two", "three", "four")
ATTRIBUTES = ("color", "shape", "texture", "position", "background", "frame", "count")
ZS_TEMPLATES = {  # zero-shot prompts in the captions' own words; statement(style="short") uses the first
    "color": ("a {} shape.", "a photo of a {} object."), "shape": ("a {}.", "a photo of a {}."),
    "texture": ("a {} shape.", "a photo of a {} object."),
    "position": ("an object in the {} corner.", "something at the {}."),
    "background": ("an object on a {} background.", "a photo against a {} background."),
    "frame": ("an image with a {} frame.", "a photo inside a {} frame."),
    "count": ("{} objects.", "a photo of {} objects."),
}
CLAUSES = {"position": ("in the {} corner", "at the {}", "in the {} of the image"),
           "background": ("on {a} {} background", "against {a} {} background", "over {a} {} background"),
           "frame": ("with {a} {} frame", "inside {a} {} frame", "in {a} {} frame")}
PREFIXES = ("", "a picture of ", "an image of ", "a photo of ")
VOCAB = {"colors": ("color", PALETTE), "shapes": ("shape", SHAPES), "textures": ("texture", TEXTURES),
         "positions": ("position", POSITIONS), "backgrounds": ("background", PALETTE),
         "frames": ("frame", PALETTE), "counts": ("count", COUNTS)}  # spec field: (attribute, allowed values)
VOCAB_FIELD = {attr: name for name, (attr, _) in VOCAB.items()}


@dataclass(frozen=True)
class SyntheticSpec:
    image_size: int = 32
    attributes: tuple = ("color", "shape", "texture", "position", "background", "frame")  # + "count"
    easy: tuple = ("color", "position", "background", "frame")  # held constant by no_easy
    hard: tuple = ("shape", "texture")  # what the benchmark expects the baseline to suppress
    no_easy: bool = False
    colors: tuple = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "brown")
    shapes: tuple = ("circle", "square", "triangle", "diamond", "cross", "star", "heart", "semicircle",
                     "trapezoid", "bowtie")
    textures: tuple = TEXTURES
    positions: tuple = tuple(POSITIONS)
    backgrounds: tuple = ("black", "gray", "navy", "maroon", "olive", "teal")
    frames: tuple = ("beige", "lavender", "mint", "salmon", "silver")
    counts: tuple = COUNTS
    # difficulty: the object is `shape_scale` of its cell (a quadrant, 14 px at 32 px; a quarter
    # of that with `count`), moved by offset_jitter of the cell, scaled +-scale_jitter, rotated
    # +-rotation_jitter degrees; Gaussian pixel noise and per-image colour jitter (0-255 units)
    shape_scale: float = 0.75
    offset_jitter: float = 0.08
    scale_jitter: float = 0.1
    rotation_jitter: float = 15.0
    noise_std: float = 10.0
    color_jitter: float = 12.0
    frame_width: int = 2
    supersample: int = 4  # the shape mask is drawn this much larger and averaged down (anti-aliasing)

    def __post_init__(self):
        for name in ("attributes", "easy", "hard") + tuple(VOCAB):  # YAML gives lists; frozen needs tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        bad = [a for a in self.attributes + self.easy + self.hard if a not in ATTRIBUTES]
        if bad or set(self.easy + self.hard) - set(self.attributes) or set(self.easy) & set(self.hard):
            raise ValueError(f"SyntheticSpec: attributes {self.attributes} (known {ATTRIBUTES}); easy {self.easy} "
                             f"and hard {self.hard} must be disjoint subsets of them" + (f"; unknown {bad}" if bad else ""))
        for name, (_, table) in VOCAB.items():
            vals = getattr(self, name)
            unknown = [v for v in vals if v not in table]
            if not vals or unknown or len(set(vals)) < len(vals):
                raise ValueError(f"SyntheticSpec.{name}={vals}: need distinct known values; unknown {unknown}, "
                                 f"choose from {list(table)}")
        if len(set(self.colors + self.backgrounds + self.frames)) < len(self.colors + self.backgrounds + self.frames):
            raise ValueError("SyntheticSpec: colors, backgrounds and frames must use different colour words, "
                             "or captions become ambiguous")

    def vocab(self, attribute: str) -> tuple:
        return getattr(self, VOCAB_FIELD[attribute])

    # the family interface the writers below use (mcl_dist/synthetic/glyphs.py has a second family)
    def sample(self, rng, n: int) -> list[dict]:
        return sample_attributes(self, rng, n)

    def render(self, attrs: dict, rng) -> Image.Image:
        return render(self, attrs, rng)

    def caption(self, attrs: dict, rng) -> str:
        return caption(self, attrs, rng)

    def statement(self, attrs: dict, attribute: str, style: str = "full") -> str:
        return statement(self, attrs, attribute, style)

    def templates(self, attribute: str) -> tuple:
        return ZS_TEMPLATES[attribute]


def easy_combinations(spec: SyntheticSpec) -> int:
    """How many distinct easy-attribute combinations the data has (1 with no_easy)."""
    return 1 if spec.no_easy else int(np.prod([len(spec.vocab(a)) for a in spec.easy]))


def sample_attributes(spec: SyntheticSpec, rng: np.random.Generator, n: int) -> list[dict]:
    """n independent records {attr: name, attr_id: int}, uniform per attribute."""
    ids = {a: (np.zeros(n, np.int64) if spec.no_easy and a in spec.easy else rng.integers(len(spec.vocab(a)), size=n))
           for a in spec.attributes}
    return [{k: v for a in spec.attributes for k, v in ((a, spec.vocab(a)[ids[a][i]]), (a + "_id", int(ids[a][i])))}
            for i in range(n)]


def render(spec: SyntheticSpec, attrs: dict, rng: np.random.Generator) -> Image.Image:
    """Draw one image. The random draws have a fixed count and order, whatever the attributes, so
    two calls with equal-seeded rngs differ only where their attributes differ (MMVP pairs)."""
    S, ss, fw = spec.image_size, spec.supersample, spec.frame_width
    slots, jit = rng.permutation(4), rng.uniform(-1, 1, (4, 4))
    phase, cj = rng.integers(0, 12, 2), rng.uniform(-1, 1, (3, 3)) * spec.color_jitter
    noise = rng.standard_normal((S, S, 3), np.float32) * spec.noise_std
    img = np.empty((S, S, 3), np.float32)
    img[:] = np.add(PALETTE[attrs.get("background", "black")], cj[1])
    if "frame" in attrs:
        ring = np.ones((S, S), bool)
        ring[fw:S - fw, fw:S - fw] = False
        img[ring] = np.add(PALETTE[attrs["frame"]], cj[2])
    q = (S - 2 * fw) / 2.0  # quadrant size; without `position` the object sits mid-image at that size
    r, c = POSITIONS[attrs["position"]] if "position" in attrs else (0.5, 0.5)
    n = COUNTS.index(attrs["count"]) + 1 if "count" in attrs else 1
    cell = q / 2 if "count" in attrs else q  # copies go into distinct sub-cells of a 2x2 grid
    texture = attrs.get("texture", "solid")
    draw = ImageDraw.Draw(mask := Image.new("L", (S * ss, S * ss), 0))
    base = SHAPES[attrs.get("shape", "circle")]
    for i in range(n):
        sr, sc = divmod(int(slots[i]), 2) if "count" in attrs else (0, 0)
        cx = fw + c * q + (sc + 0.5 + spec.offset_jitter * jit[i, 0]) * cell
        cy = fw + r * q + (sr + 0.5 + spec.offset_jitter * jit[i, 1]) * cell
        half = 0.5 * cell * spec.shape_scale * (1 + spec.scale_jitter * jit[i, 2])
        t = np.deg2rad(spec.rotation_jitter * jit[i, 3])
        pts = base @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])  # rotation jitter
        for scale, fill in ((1.0, 255), (0.45, 0)) if texture == "hollow" else ((1.0, 255),):
            draw.polygon([tuple(p) for p in ((pts * half * scale + (cx, cy)) * ss)], fill=fill)
    alpha = np.asarray(mask, np.float32).reshape(S, ss, S, ss).mean((1, 3))[..., None] / 255.0
    y, x = np.mgrid[:S, :S]
    px, py = x + phase[0], y + phase[1]
    on = {"striped": (px + py) // 2 % 2 == 0, "checkered": (px // 2 + py // 2) % 2 == 0,
          "dotted": (px % 3 > 0) | (py % 3 > 0)}.get(texture, np.ones((S, S), bool))
    colour = np.add(PALETTE[attrs.get("color", "white")], cj[0]) * np.where(on, 1.0, 0.3)[..., None]
    img = img * (1 - alpha) + colour * alpha + noise
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))


def _art(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _sentence(attrs: dict, order: int, forms: dict, clause_order: list, prefix: str) -> str:
    plural = attrs.get("count", "one") != "one"
    noun = attrs.get("shape", "shape")
    noun = (noun + ("es" if noun[-1] in "sx" else "s")) if plural else noun
    adjs = [attrs[k] for k in ("color", "texture") if k in attrs]
    adjs = adjs[::-1] if order == 1 else adjs
    if order == 2 and adjs:  # "a triangle that is red and striped"
        lead = attrs.get("count") or _art(noun)
        head = f"{lead} {noun} that {'are' if plural else 'is'} {' and '.join(adjs)}"
    else:
        words = adjs + [noun]
        head = " ".join([attrs.get("count") or _art(words[0])] + words)
    clauses = [CLAUSES[k][forms[k]].format(attrs[k], a=_art(attrs[k])) for k in clause_order]
    return prefix + " ".join([head] + clauses)


def caption(spec: SyntheticSpec, attrs: dict, rng: np.random.Generator) -> str:
    """A caption naming every attribute value verbatim, in a seeded choice of templates and orders."""
    keys = [k for k in CLAUSES if k in attrs]
    forms = {k: int(rng.integers(len(CLAUSES[k]))) for k in keys}
    order = [keys[i] for i in rng.permutation(len(keys))]
    return _sentence(attrs, int(rng.integers(3)), forms, order, PREFIXES[int(rng.integers(len(PREFIXES)))])


def statement(spec: SyntheticSpec, attrs: dict, attribute: str, style: str = "full") -> str:
    """MMVP statement. "full": the canonical caption (fixed template), so a pair's two statements
    differ only in `attribute`'s words; "short": the attribute's first zero-shot prompt."""
    if style == "short":
        return ZS_TEMPLATES[attribute][0].format(attrs[attribute]).rstrip(".")
    if style != "full":
        raise ValueError(f"statement style {style!r}: use 'full' or 'short'")
    keys = [k for k in CLAUSES if k in attrs]
    return _sentence(attrs, 1, {k: 0 for k in keys}, keys, "")  # texture first: 'a' vs 'an' stays put


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast; the images are tiny anyway
    return buf.getvalue()


def _rng(seed: int, prefix: str, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(prefix.encode()), *more])


def _spec_dict(spec: SyntheticSpec) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(spec)))  # tuples -> lists, as read back from JSON


def shard_pattern(paths: list[str]) -> str:
    """`out/train-{00000..00007}.tar` for the shards write_synthetic_shards returns."""
    stem = paths[0].rsplit("-", 1)[0]
    return f"{stem}-{{00000..{len(paths) - 1:05d}}}.tar"


def write_synthetic_shards(out_dir: str, *, n_samples: int, samples_per_shard: int, seed: int,
                           spec=SyntheticSpec(), prefix: str = "train",
                           progress: bool = True) -> list[str]:
    """Write `{prefix}-00000.tar ...` (each atomically), deterministic in (seed, prefix, spec). A shard
    already on disk is kept when `{prefix}.manifest.json` records the same parameters (resume);
    with other parameters, every shard is rewritten and stale ones are removed."""

    if n_samples < 1 or samples_per_shard < 1:
        raise ValueError(f"write_synthetic_shards: n_samples={n_samples}, samples_per_shard={samples_per_shard} "
                         f"must be >= 1")
    n_shards = -(-n_samples // samples_per_shard)
    paths = [os.path.join(out_dir, f"{prefix}-{i:05d}.tar") for i in range(n_shards)]
    params = {"n_samples": n_samples, "samples_per_shard": samples_per_shard, "seed": seed, "prefix": prefix,
              "spec": _spec_dict(spec)}
    man_path = os.path.join(out_dir, f"{prefix}.manifest.json")
    old = read_json(man_path) if os.path.exists(man_path) else None
    same = old is not None and old.get("params") == params
    if same and old.get("complete") and all(map(os.path.exists, paths)):
        return paths  # nothing to do; the manifest is left untouched too
    names = [os.path.basename(p) for p in paths]
    for stale in set(old.get("shards", []) if old and not same else []) - set(names):
        if os.path.exists(os.path.join(out_dir, stale)):  # other data under our names: never mix them
            os.remove(os.path.join(out_dir, stale))
    # the manifest comes first: a shard present under it later is complete (atomic) and ours
    write_json({"params": params, "shards": names, "complete": False}, man_path)
    bar = progress_bar(n_samples, desc=f"synthetic {prefix}", unit="img", enabled=progress)
    for s, path in enumerate(paths):
        n = min(samples_per_shard, n_samples - s * samples_per_shard)
        if same and os.path.exists(path):
            bar.update(n)
            continue
        rng = _rng(seed, prefix, s)
        with atomic_path(path) as tmp, open(tmp, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0.0) as sink:
            for i, attrs in enumerate(spec.sample(rng, n)):
                img, text = spec.render(attrs, rng), spec.caption(attrs, rng)
                sink.write({"__key__": f"{prefix}{seed}_{s * samples_per_shard + i:08d}", "png": _png(img),
                            "txt": text.encode(), "json": json.dumps(attrs, sort_keys=True).encode()})
                bar.update(1)
    bar.close()
    write_json({"params": params, "shards": names, "complete": True}, man_path)
    return paths


def write_mmvp_pairs(out_dir: str, *, spec=SyntheticSpec(), n_pairs_per_attribute: int = 32,
                     seed: int = 0, attributes: Optional[tuple] = None, style: str = "full") -> str:
    """MMVP-VLM folder (module docstring) with pairs for every attribute that has two or more
    values (default). Built in a temp folder and renamed into place; kept when its
    `synthetic.json` records the same parameters."""
    attributes = tuple(attributes or [a for a in spec.attributes
                                      if len(spec.vocab(a)) > 1 and not (spec.no_easy and a in spec.easy)])
    params = {"spec": _spec_dict(spec), "n_pairs_per_attribute": n_pairs_per_attribute, "seed": seed,
              "attributes": list(attributes), "style": style}
    marker = os.path.join(out_dir, "synthetic.json")
    if os.path.exists(marker) and read_json(marker) == params and os.path.exists(os.path.join(out_dir, "Questions.csv")):
        return out_dir
    if os.path.exists(out_dir) and not os.path.exists(marker):
        raise FileExistsError(f"{out_dir}: exists and was not written by write_mmvp_pairs; not replacing it")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the final folder should read like any other
    try:
        rows, records, qid = [("Question ID", "Type", "Statement")], {}, 1
        for attr in attributes:
            rng = _rng(seed, "mmvp:" + attr)
            os.makedirs(os.path.join(tmp, "MLLM_VLM Images", attr))
            for _ in range(n_pairs_per_attribute):
                a, k = spec.sample(rng, 1)[0], len(spec.vocab(attr))
                j = int((a[attr + "_id"] + rng.integers(1, k)) % k)  # any other value, uniformly
                b = dict(a, **{attr: spec.vocab(attr)[j], attr + "_id": j})
                render_seed = int(rng.integers(2 ** 63))
                for rec in (a, b):
                    img = spec.render(rec, np.random.default_rng(render_seed))  # same jitter and noise
                    img.save(os.path.join(tmp, "MLLM_VLM Images", attr, f"{qid}.jpg"), quality=95, subsampling=0)
                    rows.append((str(qid), attr, spec.statement(rec, attr, style)))
                    records[str(qid)] = rec
                    qid += 1
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        write_text(buf.getvalue(), os.path.join(tmp, "Questions.csv"))
        write_json(records, os.path.join(tmp, "attributes.json"))
        write_json(params, os.path.join(tmp, "synthetic.json"))
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)  # ours (it has the marker), from other parameters
        os.replace(tmp, out_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return out_dir


def write_zero_shot_sets(path: str, spec=SyntheticSpec()) -> str:
    """{attribute: {"classnames", "templates"}} as eval.zero_shot_classes reads it."""
    sets = {a: {"classnames": list(spec.vocab(a)), "templates": list(spec.templates(a))} for a in spec.attributes}
    if not os.path.exists(path) or read_json(path) != sets:  # unchanged files keep their mtime
        write_json(sets, path)
    return path


def ensure_demo_data(root: str, n_train: int = 2048, n_test: int = 512, seed: int = 0, samples_per_shard: int = 256,
                     spec: Optional[SyntheticSpec | dict] = None, mmvp_pairs: int = 32, progress: bool = True) -> dict:
    """Make (or resume, or keep) train/test shards, the MMVP folder and zero_shot.json under `root`.
    Returns {"train", "test": shard patterns, "mmvp": folder, "zero_shot": json path,
    "label_fields", "easy", "hard": attribute names, "easy_combinations": int}."""
    spec = SyntheticSpec(**spec) if isinstance(spec, dict) else spec or SyntheticSpec()  # dict: from YAML
    train = write_synthetic_shards(root, n_samples=n_train, samples_per_shard=samples_per_shard, seed=seed,
                                   spec=spec, prefix="train", progress=progress)
    test = write_synthetic_shards(root, n_samples=n_test, samples_per_shard=samples_per_shard, seed=seed,
                                  spec=spec, prefix="test", progress=progress)
    mmvp = write_mmvp_pairs(os.path.join(root, "mmvp"), spec=spec, n_pairs_per_attribute=mmvp_pairs,
                            seed=seed) if mmvp_pairs > 0 else ""  # "": no MMVP evaluation
    return {"train": shard_pattern(train), "test": shard_pattern(test), "mmvp": mmvp,
            "zero_shot": write_zero_shot_sets(os.path.join(root, "zero_shot.json"), spec),
            "label_fields": list(spec.attributes), "easy": list(spec.easy), "hard": list(spec.hard),
            "easy_combinations": easy_combinations(spec)}
