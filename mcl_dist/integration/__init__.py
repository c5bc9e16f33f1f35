"""The stages combined: the integrated model and `load_model` (integrated_model.py), and how much a
stage's features differ from the earlier stages' (stage_similarity.py: linear CKA, used by the
`cka_*` integration weights and the stop signal)."""
from mcl_dist.integration.integrated_model import load_model  # the public way to load what a run made

__all__ = ["load_model"]
