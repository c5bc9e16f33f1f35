"""The third synthetic family ("dials"), for the feature-suppression benchmark's final report only: it
was defined before any run on it and chooses nothing (tools/bench_suppression_protocol.py).

It differs from shapes (mcl_dist/synthetic/trifeature.py) and glyphs (mcl_dist/synthetic/glyphs.py) in its
image statistics and in the kind of its hard attributes. Each 32x32 image has a smooth two-tone
gradient at a random angle (not a flat backdrop), a ring around the centre, a square patch in one
corner and heavy Gaussian pixel noise (std 22 on 0-255, twice the other families'). EASY attributes
cover many pixels: `tint` (the gradient's colour), `ring` and `patch` (colours) and `corner` (where
the patch sits): 8 x 6 x 6 x 4 = 1,152 easy combinations. The HARD ones are not object categories:
`hand`, the ORIENTATION of a thin low-contrast line from the centre (8 compass directions, jittered
+-6 degrees), and `dots`, a NUMBER (1-4 small dots at random places inside the ring).

`DialSpec` has the family interface of mcl_dist/synthetic/trifeature.py (sample, render, caption, statement,
templates, vocab), so that module's writers produce the same shard / MMVP / zero-shot layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from mcl_dist.synthetic.trifeature import PALETTE, PREFIXES

DIRECTIONS = ("north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest")
COUNTS = ("one", "two", "three", "four")
CORNERS = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}
TEMPLATES = {
    "hand": ("a dial pointing {}.", "a photo of a dial whose hand points {}."),
    "dots": ("a dial with {} dots.", "a photo of {} dots on a dial."),
    "tint": ("a dial on a {} gradient.", "a photo tinted {}."),
    "ring": ("a dial with a {} ring.", "a photo of a {} ring."),
    "patch": ("a dial with a {} patch.", "a photo with a {} square."),
    "corner": ("a patch in the {} corner.", "a photo with a square at the {}."),
}
CLAUSES = {"tint": ("on {a} {} gradient", "tinted {}", "over {a} {} wash"),
           "ring": ("inside {a} {} ring", "with {a} {} ring", "circled in {}"),
           "patch": ("with {a} {} patch", "beside {a} {} square", "and {a} {} patch"),
           "corner": ("in the {} corner", "at the {}", "placed at the {}")}
VOCAB_FIELD = {"hand": "hands", "dots": "dot_counts", "tint": "tints", "ring": "rings", "patch": "patches",
               "corner": "corners"}


@dataclass(frozen=True)
class DialSpec:
    family: str = "dials"  # recorded in the shards' manifest, so the families never mix
    image_size: int = 32
    attributes: tuple = ("hand", "dots", "tint", "ring", "patch", "corner")
    easy: tuple = ("tint", "ring", "patch", "corner")  # held constant by no_easy
    hard: tuple = ("hand", "dots")
    no_easy: bool = False
    hands: tuple = DIRECTIONS
    dot_counts: tuple = COUNTS
    tints: tuple = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
    rings: tuple = ("white", "black", "gray", "brown", "magenta", "lime")
    patches: tuple = ("navy", "maroon", "olive", "teal", "beige", "mint")
    corners: tuple = tuple(CORNERS)
    ring_radius: float = 13.0
    ring_width: float = 2.0
    patch_size: int = 7
    hand_length: float = 8.5
    hand_width: float = 1.3
    hand_contrast: float = 70.0  # the hand is the dial's mean colour +- this (0-255 units)
    rotation_jitter: float = 6.0
    dot_radius: float = 1.1
    noise_std: float = 22.0
    color_jitter: float = 14.0
    supersample: int = 4

    def __post_init__(self):
        for name in ("attributes", "easy", "hard") + tuple(VOCAB_FIELD.values()):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if (set(self.attributes) - set(VOCAB_FIELD) or set(self.easy + self.hard) - set(self.attributes)
                or set(self.easy) & set(self.hard)):
            raise ValueError(f"DialSpec: attributes {self.attributes} (known {tuple(VOCAB_FIELD)}); easy {self.easy} "
                             f"and hard {self.hard} must be disjoint subsets of them")
        tables = {"hands": DIRECTIONS, "dot_counts": COUNTS, "tints": PALETTE, "rings": PALETTE, "patches": PALETTE,
                  "corners": CORNERS}
        for name, table in tables.items():
            vals = getattr(self, name)
            bad = [v for v in vals if v not in table]
            if not vals or bad or len(set(vals)) < len(vals):
                raise ValueError(f"DialSpec.{name}={vals}: need distinct known values; bad {bad}")
        words = self.tints + self.rings + self.patches
        if len(set(words)) < len(words):
            raise ValueError("DialSpec: tint, ring and patch need different colour words")

    def vocab(self, attribute: str) -> tuple:
        return getattr(self, VOCAB_FIELD[attribute])

    def templates(self, attribute: str) -> tuple:
        return TEMPLATES[attribute]

    def sample(self, rng: np.random.Generator, n: int) -> list[dict]:
        """n independent records {attr: name, attr_id: int}, uniform per attribute."""
        ids = {a: (np.zeros(n, np.int64) if self.no_easy and a in self.easy else rng.integers(len(self.vocab(a)), size=n))
               for a in self.attributes}
        return [{k: v for a in self.attributes for k, v in ((a, self.vocab(a)[ids[a][i]]), (a + "_id", int(ids[a][i])))}
                for i in range(n)]

    def render(self, attrs: dict, rng: np.random.Generator) -> Image.Image:
        """One image. The random draws have a fixed count and order whatever the attributes, so two
        calls with equal-seeded rngs differ only where their attributes differ (MMVP pairs)."""
        S, ss = self.image_size, self.supersample
        angle, jit = rng.uniform(0, 2 * np.pi), rng.uniform(-1, 1)
        cj = rng.uniform(-1, 1, (4, 3)) * self.color_jitter
        dot_r, dot_a = rng.uniform(3.5, self.ring_radius - self.ring_width - 2.0, 4), rng.uniform(0, 2 * np.pi, 4)
        sign = 1.0 if rng.uniform() < 0.5 else -1.0  # the hand is lighter or darker than the dial
        noise = rng.standard_normal((S, S, 3), np.float32) * self.noise_std
        y, x = np.mgrid[:S, :S].astype(np.float32)
        c = (S - 1) / 2.0
        ramp = (((x - c) * np.cos(angle) + (y - c) * np.sin(angle)) / S + 0.5)[..., None]  # 0..1 across the image
        tint = np.add(PALETTE[attrs.get("tint", "gray")], cj[0])
        img = tint * (0.55 + 0.45 * ramp)
        r = np.hypot(x - c, y - c)[..., None]
        ring = np.clip(self.ring_width / 2 + 0.5 - np.abs(r - self.ring_radius), 0, 1)
        img = img * (1 - ring) + np.add(PALETTE[attrs.get("ring", "white")], cj[1]) * ring
        if "corner" in attrs or "patch" in attrs:
            row, col = CORNERS[attrs.get("corner", "top left")]
            p = self.patch_size
            ys, xs = slice(0, p) if row == 0 else slice(S - p, S), slice(0, p) if col == 0 else slice(S - p, S)
            img[ys, xs] = np.add(PALETTE[attrs.get("patch", "navy")], cj[2])
        mask = Image.new("L", (S * ss, S * ss), 0)
        draw = ImageDraw.Draw(mask)
        if "hand" in attrs:
            t = np.deg2rad(45.0 * DIRECTIONS.index(attrs["hand"]) + self.rotation_jitter * jit)
            end = (c + self.hand_length * np.sin(t), c - self.hand_length * np.cos(t))  # north is up
            draw.line([(c * ss, c * ss), (end[0] * ss, end[1] * ss)], fill=255, width=max(1, round(self.hand_width * ss)))
        n = COUNTS.index(attrs["dots"]) + 1 if "dots" in attrs else 0
        for i in range(n):
            cx, cy = c + dot_r[i] * np.cos(dot_a[i]), c + dot_r[i] * np.sin(dot_a[i])
            rr = self.dot_radius * ss
            draw.ellipse([cx * ss - rr, cy * ss - rr, cx * ss + rr, cy * ss + rr], fill=255)
        alpha = np.asarray(mask, np.float32).reshape(S, ss, S, ss).mean((1, 3))[..., None] / 255.0
        mark = np.clip(tint * 0.8 + sign * self.hand_contrast + cj[3], 0, 255)
        img = img * (1 - alpha) + mark * alpha + noise
        return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))

    def _sentence(self, attrs: dict, head: int, forms: dict, order: list, prefix: str) -> str:
        art = lambda w: "an" if w[0] in "aeiou" else "a"  # noqa: E731
        hand, dots = attrs.get("hand"), attrs.get("dots")
        parts = ["a dial"] + ([f"pointing {hand}"] if hand else []) + ([f"with {dots} dot{'' if dots == 'one' else 's'}"]
                                                                       if dots else [])
        if head == 1 and hand and dots:  # the two hard words in the other order
            parts = ["a dial", f"with {dots} dot{'' if dots == 'one' else 's'}", f"pointing {hand}"]
        clauses = [CLAUSES[k][forms[k]].format(attrs[k], a=art(attrs[k])) for k in order]
        return prefix + " ".join(parts + clauses)

    def caption(self, attrs: dict, rng: np.random.Generator) -> str:
        """Names every attribute value verbatim, in a seeded choice of templates and clause orders."""
        keys = [k for k in CLAUSES if k in attrs]
        forms = {k: int(rng.integers(len(CLAUSES[k]))) for k in keys}
        order = [keys[i] for i in rng.permutation(len(keys))]
        return self._sentence(attrs, int(rng.integers(2)), forms, order, PREFIXES[int(rng.integers(len(PREFIXES)))])

    def statement(self, attrs: dict, attribute: str, style: str = "full") -> str:
        """MMVP statement: "full" is one fixed template (a pair's statements differ only in the
        attribute's words), "short" the attribute's first zero-shot prompt."""
        if style == "short":
            return TEMPLATES[attribute][0].format(attrs[attribute]).rstrip(".")
        if style != "full":
            raise ValueError(f"statement style {style!r}: use 'full' or 'short'")
        keys = [k for k in CLAUSES if k in attrs]
        return self._sentence(attrs, 0, {k: 0 for k in keys}, keys, "")
