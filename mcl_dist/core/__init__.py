"""Foundations every layer uses and that know nothing of MCL's method: atomic files and safe loads,
progress lines, the one place that talks to torch.distributed, and the run directory's layout
(every path under <run_dir> and every step name, spelled once)."""
