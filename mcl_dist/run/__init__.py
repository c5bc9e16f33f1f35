"""A run directory's state, which the steps read and write: the manifest and its checksums
(manifest.py, verify.py), the launch guards (guards.py: the lock and the orphan sweep) and what a
step body may know about its run (run_context.py). The paths themselves are core/layout.py's."""
