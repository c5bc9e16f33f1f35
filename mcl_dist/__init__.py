"""mcl_dist: distributed Multistage Contrastive Learning (MCL) on webdataset shards or CSV datasets.

Load a stage checkpoint or an integrated model with `mcl_dist.integration.load_model(path)`; with plain open_clip,
a stage's folder: `open_clip.create_model_and_transforms("local-dir:RUN/stage_0/open_clip")`.

The package is grouped by layer (docs/design.md section 9): core, config, data, synthetic, model,
objectives, training, clustering, eval, steps, run, report, commands, bench.
"""
__version__ = "0.1.0"
