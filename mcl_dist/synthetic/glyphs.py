"""The second synthetic family ("glyphs"): capital letters rendered from DejaVu fonts in several
styles, for the feature-suppression benchmark's transfer test (a recipe chosen on one
family must hold on the other, so this is a different data set, not a variant of the shapes one).

Each 32x32 image shows one letter. EASY attributes cover many pixels: `ink` (the letter's colour),
`backdrop` (the background) and `band` (a 3 px stripe along the top edge). `position` is one of 6
cells (2 rows x 3 columns). The HARD attribute is `letter` (10 capitals of similar ink mass, ~11 px
tall), drawn in one of several font styles (sans, bold, serif, italic, mono: a nuisance the
caption never names), rotated a few degrees and moved inside its cell, with pixel noise: telling
B from R or E from F needs fine detail. 8 inks x 6 backdrops x 5 bands x 6 positions = 1,440 easy
combinations (more than any K the benchmark sweeps; docs/design.md section 7: suppression needs many).

`GlyphSpec` offers the family interface of mcl_dist/synthetic/trifeature.py (sample, render, caption,
statement, templates, vocab), so that module's writers produce the same shard / MMVP / zero-shot
layout for it. The fonts are matplotlib's bundled DejaVu TTFs (matplotlib is a dependency).
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mcl_dist.synthetic.trifeature import PALETTE, PREFIXES  # caption prefixes shared with family A

FONT_FILES = {"sans": "DejaVuSans.ttf", "sans bold": "DejaVuSans-Bold.ttf", "sans oblique": "DejaVuSans-Oblique.ttf",
              "serif": "DejaVuSerif.ttf", "serif italic": "DejaVuSerif-Italic.ttf", "mono": "DejaVuSansMono.ttf"}
CELLS = {"upper left": (0, 0), "upper middle": (0, 1), "upper right": (0, 2),
         "lower left": (1, 0), "lower middle": (1, 1), "lower right": (1, 2)}
TEMPLATES = {
    "letter": ("the letter {}.", "a photo of the letter {}."),
    "ink": ("a letter in {} ink.", "a photo of a {} letter."),
    "position": ("a letter at the {}.", "a photo of a letter in the {} of the image."),
    "backdrop": ("a letter on a {} background.", "a photo against a {} backdrop."),
    "band": ("an image under a {} band.", "a photo with a {} stripe on top."),
}
CLAUSES = {"ink": ("in {} ink", "written in {}", "printed in {}"),
           "position": ("at the {}", "in the {} of the image", "placed at the {}"),
           "backdrop": ("on {a} {} background", "against {a} {} backdrop", "over {a} {} background"),
           "band": ("under {a} {} band", "below {a} {} stripe", "with {a} {} band on top")}
HEADS = ("the letter {}", "a letter {}", "the capital {}", "a capital letter {}")
VOCAB_FIELD = {"letter": "letters", "ink": "inks", "position": "positions", "backdrop": "backdrops", "band": "bands"}


def font_dir() -> str:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the glyphs family needs matplotlib's bundled DejaVu fonts: pip install matplotlib")
    return os.path.join(list(spec.submodule_search_locations)[0], "mpl-data", "fonts", "ttf")


@functools.lru_cache(maxsize=256)
def glyph_mask(letter: str, style: str, size: int = 96) -> Image.Image:
    """The letter's ink as an 'L' image cropped to its bounding box (cached: fonts are slow to open)."""
    font = ImageFont.truetype(os.path.join(font_dir(), FONT_FILES[style]), size)
    img = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(img).text((size // 2, size // 4), letter, fill=255, font=font)
    return img.crop(img.getbbox())


@dataclass(frozen=True)
class GlyphSpec:
    family: str = "glyphs"  # recorded in the shards' manifest, so the two families never mix
    image_size: int = 32
    attributes: tuple = ("letter", "ink", "position", "backdrop", "band")
    easy: tuple = ("ink", "backdrop", "band")  # held constant by no_easy
    hard: tuple = ("letter", "position")
    no_easy: bool = False
    letters: tuple = ("B", "D", "E", "F", "H", "K", "N", "P", "R", "S")
    inks: tuple = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
    positions: tuple = tuple(CELLS)
    backdrops: tuple = ("black", "gray", "navy", "maroon", "olive", "teal")
    bands: tuple = ("white", "beige", "lavender", "mint", "salmon")
    styles: tuple = tuple(FONT_FILES)  # drawn per image, never captioned
    glyph_scale: float = 0.8  # letter height as a share of its cell's height
    offset_jitter: float = 0.08
    scale_jitter: float = 0.08
    rotation_jitter: float = 8.0
    noise_std: float = 10.0
    color_jitter: float = 12.0
    band_width: int = 3
    supersample: int = 4

    def __post_init__(self):
        for name in ("attributes", "easy", "hard", "styles") + tuple(VOCAB_FIELD.values()):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        known = tuple(VOCAB_FIELD)
        if (set(self.attributes) - set(known) or set(self.easy + self.hard) - set(self.attributes)
                or set(self.easy) & set(self.hard)):
            raise ValueError(f"GlyphSpec: attributes {self.attributes} (known {known}); easy {self.easy} and "
                             f"hard {self.hard} must be disjoint subsets of them")
        tables = {"letters": None, "inks": PALETTE, "positions": CELLS, "backdrops": PALETTE, "bands": PALETTE}
        for name, table in tables.items():
            vals = getattr(self, name)
            bad = [v for v in vals if (table is not None and v not in table) or (table is None and len(v) != 1)]
            if not vals or bad or len(set(vals)) < len(vals):
                raise ValueError(f"GlyphSpec.{name}={vals}: need distinct known values; bad {bad}")
        words = self.inks + self.backdrops + self.bands
        if len(set(words)) < len(words) or set(self.styles) - set(FONT_FILES):
            raise ValueError(f"GlyphSpec: ink, backdrop and band need different colour words; styles from {list(FONT_FILES)}")

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

    def _letter_alpha(self, attrs: dict, style: str, jit: np.ndarray) -> np.ndarray:
        S, ss, bw = self.image_size, self.supersample, self.band_width
        ch, cw = (S - bw) / 2.0, S / 3.0  # one cell of the 2 x 3 grid below the band
        r, c = CELLS[attrs["position"]] if "position" in attrs else (0.5, 1.0)
        glyph = glyph_mask(attrs.get("letter", "B"), style).rotate(self.rotation_jitter * jit[3], Image.BILINEAR,
                                                                   expand=True)
        h = ch * self.glyph_scale * (1 + self.scale_jitter * jit[2]) * ss
        w = min(h * glyph.width / glyph.height, 0.92 * cw * ss)
        glyph = np.asarray(glyph.resize((max(1, round(w)), max(1, round(h))), Image.BILINEAR), np.float32)
        cx = (c + 0.5 + self.offset_jitter * jit[0]) * cw * ss
        cy = (bw + (r + 0.5 + self.offset_jitter * jit[1]) * ch) * ss
        top, left = int(round(cy - glyph.shape[0] / 2)), int(round(cx - glyph.shape[1] / 2))
        canvas = np.zeros((S * ss + 2 * glyph.shape[0], S * ss + 2 * glyph.shape[1]), np.float32)  # room to clip
        oy, ox = glyph.shape[0] + top, glyph.shape[1] + left
        canvas[oy:oy + glyph.shape[0], ox:ox + glyph.shape[1]] = glyph
        mask = canvas[glyph.shape[0]:glyph.shape[0] + S * ss, glyph.shape[1]:glyph.shape[1] + S * ss]
        return mask.reshape(S, ss, S, ss).mean((1, 3))[..., None] / 255.0

    def render(self, attrs: dict, rng: np.random.Generator) -> Image.Image:
        """One image. The random draws have a fixed count and order whatever the attributes, so two
        calls with equal-seeded rngs differ only where their attributes differ (MMVP pairs)."""
        S = self.image_size
        style = self.styles[int(rng.integers(len(self.styles)))]
        jit, cj = rng.uniform(-1, 1, 4), rng.uniform(-1, 1, (3, 3)) * self.color_jitter
        noise = rng.standard_normal((S, S, 3), np.float32) * self.noise_std
        img = np.empty((S, S, 3), np.float32)
        img[:] = np.add(PALETTE[attrs.get("backdrop", "black")], cj[1])
        if "band" in attrs:
            img[:self.band_width] = np.add(PALETTE[attrs["band"]], cj[2])
        alpha = self._letter_alpha(attrs, style, jit)
        img = img * (1 - alpha) + np.add(PALETTE[attrs.get("ink", "white")], cj[0]) * alpha + noise
        return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))

    def _sentence(self, attrs: dict, head: int, forms: dict, order: list, prefix: str) -> str:
        art = lambda w: "an" if w[0] in "aeiou" else "a"  # noqa: E731
        clauses = [CLAUSES[k][forms[k]].format(attrs[k], a=art(attrs[k])) for k in order]
        return prefix + " ".join([HEADS[head].format(attrs.get("letter", "B"))] + clauses)

    def caption(self, attrs: dict, rng: np.random.Generator) -> str:
        """Names every attribute value verbatim, in a seeded choice of templates and clause orders."""
        keys = [k for k in CLAUSES if k in attrs]
        forms = {k: int(rng.integers(len(CLAUSES[k]))) for k in keys}
        order = [keys[i] for i in rng.permutation(len(keys))]
        return self._sentence(attrs, int(rng.integers(len(HEADS))), forms, order,
                              PREFIXES[int(rng.integers(len(PREFIXES)))])

    def statement(self, attrs: dict, attribute: str, style: str = "full") -> str:
        """MMVP statement: "full" is one fixed template (a pair's statements differ only in the
        attribute's words), "short" the attribute's first zero-shot prompt."""
        if style == "short":
            return TEMPLATES[attribute][0].format(attrs[attribute]).rstrip(".")
        if style != "full":
            raise ValueError(f"statement style {style!r}: use 'full' or 'short'")
        keys = [k for k in CLAUSES if k in attrs]
        return self._sentence(attrs, 0, {k: 0 for k in keys}, keys, "")
