"""mcl_dist: distributed Multistage Contrastive Learning (MCL) on webdataset shards."""
__version__ = "0.1.0"

