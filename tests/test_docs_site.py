"""The manual builds with --strict, loads nothing from outside the site, and its reference
tables are generated from the code (issue 23, 2, 3, 7)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")

ROOT = Path(__file__).resolve().parent.parent
# What a page loads by itself: scripts, stylesheets, images, frames, fonts, CSS imports.
LOADS = re.compile(
    r"""<(?:script|img|iframe|source|audio|video|embed)\b[^>]*\bsrc=["']?(https?:)?//"""
    r"""|<link\b[^>]*\bhref=["']?(https?:)?//"""
    r"""|@import\s+(?:url\()?["']?(https?:)?//"""
    r"""|url\(["']?(https?:)?//""",
    re.IGNORECASE,
)
CDN_HOSTS = re.compile(
    r"https?://(?:[a-z0-9-]+\.)*(?:googleapis|gstatic|unpkg|jsdelivr|cdnjs|cloudflare|"
    r"bootstrapcdn|fontawesome)\.(?:com|net|org)",
    re.IGNORECASE,
)


def _gen():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs/gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("ELIGIBILITY_")}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _text(page: Path) -> str:
    return re.sub(r"<[^>]+>", "", page.read_text())


def test_built_pages_load_nothing_from_outside(site: Path) -> None:
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 20
    for page in pages:
        html = page.read_text()
        assert not LOADS.search(html), f"{page.relative_to(site)} loads from outside the site"
        assert not CDN_HOSTS.search(html), f"{page.relative_to(site)} names a CDN"
    for css in site.rglob("*.css"):
        text = css.read_text()
        # a licence comment may name a site; only what the stylesheet loads counts
        assert not re.search(r"(?:@import\s+|url\()[\"']?(?:https?:)?//", text), css.name


def test_the_outside_check_catches_a_cdn() -> None:
    assert LOADS.search('<link rel="stylesheet" href="https://fonts.googleapis.com/css?x">')
    assert LOADS.search('<script src="https://unpkg.com/x.js"></script>')
    assert not LOADS.search('<a href="https://hl7.org/fhir/">FHIR</a>')


def test_every_rule_kind_and_parameter_is_in_the_manual(site: Path) -> None:
    from service.clinical.rules import load_all

    text = _text(site / "authors" / "rule-kinds" / "index.html")
    for name, rule in load_all().items():
        assert f"{name}" in text
        for field in rule.params.model_fields:
            assert field in text, f"{name}.{field}"


def test_every_setting_is_in_the_configuration_table(site: Path) -> None:
    from service.settings import Settings

    text = _text(site / "operators" / "configuration" / "index.html")
    for name in Settings.model_fields:
        assert f"ELIGIBILITY_{name.upper()}" in text


def test_every_benchmark_target_and_route_is_in_the_manual(site: Path) -> None:
    from benchmarks.targets import TARGETS
    from service.api import app

    perf = _text(site / "performance" / "index.html")
    assert all(t.id in perf for t in TARGETS)
    api = _text(site / "integrators" / "openapi" / "index.html")
    assert all(path in api for path in app.openapi()["paths"])
    assert (site / "openapi.json").read_text().startswith("{")


def test_settings_notes_naming_a_missing_setting_fail_the_build() -> None:
    gen = _gen()
    assert gen.check_setting_names(["MAX_BODY_BYTES", "REDIS_URL"]) == []
    assert gen.check_setting_names(["MAX_BODY_BYTES", "NO_SUCH_SETTING"]) == ["NO_SUCH_SETTING"]


def test_field_comments_come_from_the_source() -> None:
    from service.settings import Settings

    comments = _gen().field_comments(Settings)
    assert "longer GET query strings" in comments["max_query_length"]
