"""mcl_dist: distributed Multistage Contrastive Learning (MCL) on webdataset shards."""
__version__ = "0.1.0"


def load_model(path: str, device: str = "cpu"):
    """(model, preprocess, tokenizer) for a stage checkpoint or an integrated multi-stage model."""
    from mcl_dist.integrate import load_model as _load

    return _load(path, device=device)
