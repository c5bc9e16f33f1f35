"""open_clip models by name, config or checkpoint, with locking (open_clip_models.py), and a stage
as an open_clip local-dir folder (open_clip_dir.py)."""
