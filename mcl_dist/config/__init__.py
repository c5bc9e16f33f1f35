"""The run configuration: its schema (schema.py), loading YAML plus overrides (load.py), where each
value came from (origins.py), the table of named choices (choices.py, registry.py), and the
translations from other trainers' names (oc_flags.py for open_clip_train's flags, key_synonyms.py)."""
