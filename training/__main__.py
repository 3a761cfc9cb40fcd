"""`python -m training ...`: the training commands of `refit` (no serving or monitoring commands)."""

from training.cli import main

main(plugins=False)
