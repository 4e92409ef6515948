"""``python -m benchmarks [--smoke] [--out DIR]``."""

from benchmarks.cli import app

app()
