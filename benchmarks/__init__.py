"""``make bench``: synthetic data, each case measured next to its floor, JSON results.

Not part of the product package (``service``): a deployment never runs it. It is run from a
checkout (``python -m benchmarks``, ``make bench``); its child processes (loopback FHIR server,
app server, memory probes) get the checkout on ``PYTHONPATH`` through :func:`child_env`.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout that holds benchmarks/ and service/


def child_env(**extra: str) -> dict[str, str]:
    """This environment, with the checkout first on ``PYTHONPATH`` so ``-m benchmarks.x`` runs."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), **extra}
