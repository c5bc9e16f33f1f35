"""The suppression benchmark's data families and which of their attributes are easy, hard and
suppressed: fixed before runs, read by the arms (data), the protocol (choices) and the report
(tables). It imports no other benchmark module, so those three never import each other for it.
"""
from __future__ import annotations

# Family A (shapes), measured on the validation split with the tiny-vit-p4 tower at T = 2,000
# (docs/results.md): the baseline learns colour, background and frame (pairs 1.00) and texture
# (1.00), and suppresses shape (0.34) and position (0.06), which the same tower learns when the easy
# attributes are held constant. So position counts as hard, and the ratio line is over `suppressed`.
# Family B (glyphs): letter and position are the hard attributes by construction; whether the
# baseline suppresses both is what its validation-split baseline and reference must show first.
FAMILY_ATTRS = {
    "A": {"attrs": ["color", "shape", "texture", "position", "background", "frame"],
          "easy": ["color", "background", "frame"], "hard": ["shape", "texture", "position"],
          "suppressed": ["shape", "position"]},
    "B": {"attrs": ["letter", "ink", "position", "backdrop", "band"], "easy": ["ink", "backdrop", "band"],
          "hard": ["letter", "position"], "suppressed": ["letter", "position"]},
    # Family C (dials, mcl_dist/synthetic/dials.py): fixed with the generator, before any run on it
    "C": {"attrs": ["hand", "dots", "tint", "ring", "patch", "corner"], "easy": ["tint", "ring", "patch", "corner"],
          "hard": ["hand", "dots"], "suppressed": ["hand", "dots"]},
}
