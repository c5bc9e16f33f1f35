"""The package's commands (console scripts `mcl-*` in setup.py; `python -m mcl_dist.commands.NAME` runs the same from a checkout)."""


def print_fields(fields: dict) -> None:
    """A command's result as `name: value` lines (stdout, one per field, in order)."""
    for name, value in fields.items():
        print(f"{name}: {value}")
