"""Running a whole MCL run: the pipeline that runs steps/'s list with the manifest, `--redo` and the
data check (runner.py), and the dry run with its torchrun / sbatch lines and time estimate."""
