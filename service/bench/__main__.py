"""``python -m service.bench [--smoke] [--out DIR]``."""

from service.bench.cli import app

app()
