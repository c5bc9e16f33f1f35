"""Synthetic image-caption families with known attributes, for the demo, the tests and the
feature-suppression benchmark: trifeature.py (family A, the demo's), glyphs.py (B), dials.py (C,
the final report's only)."""
