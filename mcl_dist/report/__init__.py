"""The run's report.md: the evaluations and plots (run_report.py) and how the run was made
(recipe.py)."""
