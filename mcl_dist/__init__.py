"""mcl_dist: distributed Multistage Contrastive Learning (MCL) on webdataset shards.

Load a stage checkpoint or an integrated model with `mcl_dist.integrate.load_model(path)`; with plain
open_clip, a stage's folder: `open_clip.create_model_and_transforms("local-dir:RUN/stage_0/open_clip")`.
"""
__version__ = "0.1.0"
