"""The package's commands (console scripts `mcl-*` in setup.py; tools/*.py run the same)."""
