"""Shared set-up for the browser tests: Debian's Chromium through Playwright, axe-core."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AXE = Path(
    os.environ.get(
        "AXE_PATH",
        Path.home() / ".cache/cart-eligibility/npm/node_modules/axe-core/axe.min.js",
    )
)
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"


def launch_browser(playwright):
    if not Path(CHROMIUM).exists() and shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM}: run deploy/browser/setup")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def screenshot(page, name: str, *, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def axe_violations(page) -> list[dict]:
    """axe-core's serious and critical violations on the current page."""
    if not AXE.is_file():
        pytest.skip(f"axe-core not installed at {AXE}: run deploy/browser/setup")
    page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
    report = page.evaluate("async () => await axe.run(document)")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in report["violations"]
        if v["impact"] in ("serious", "critical")
    ]
