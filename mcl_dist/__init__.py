"""mcl_dist: distributed Multistage Contrastive Learning (MCL) on webdataset shards.

Load a stage checkpoint or an integrated model with `mcl_dist.integrate.load_model(path)`.
"""
__version__ = "0.1.0"
