"""The type checker's rules stay honest: `make typecheck` (in .ci/run) reports zero errors, and
that must not come from a weakened configuration or from silent ``# type: ignore`` comments."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^\]]*\])?(?P<rest>.*)$")
CODES = re.compile(r"\[[a-z0-9-]+(\s*,\s*[a-z0-9-]+)*\]")
# Switches that would hide errors instead of fixing them.
WEAKENING = ("ignore_errors", "disable_error_code", "follow_imports")


def _ignores(text: str) -> list[tuple[int, str, str]]:
    """(line number, the ignore's codes, why) for each ``# type: ignore`` in ``text``; why is
    the comment after it on the line, else a comment on the line just above."""
    lines = text.splitlines()
    found = []
    for n, line in enumerate(lines):
        match = IGNORE.search(line)
        if match is None:
            continue
        why = match["rest"].strip().lstrip("#").strip()
        above = lines[n - 1].strip() if n else ""
        if not why and above.startswith("#"):
            why = above.lstrip("#").strip()
        found.append((n + 1, match["codes"] or "", why))
    return found


def test_every_type_ignore_names_its_code_and_reason() -> None:
    bad = []
    for path in sorted((ROOT / "service").rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        for line, codes, why in _ignores(path.read_text(encoding="utf-8")):
            where = f"{path.relative_to(ROOT)}:{line}"
            if not CODES.fullmatch(codes):
                bad.append(f"{where}: no specific error code")
            elif not why:
                bad.append(f"{where}: no reason (a comment after it, or on the line above)")
    assert not bad, "\n".join(bad)


def test_the_scan_catches_a_bare_ignore_and_a_missing_reason() -> None:
    """The scan itself: an ignore without a code, and one with a code but no reason, are seen."""
    text = "x = f()  # type: ignore\ny = g()  # type: ignore[arg-type]\n"
    assert _ignores(text) == [(1, "", ""), (2, "[arg-type]", "")]
    assert not CODES.fullmatch("")
    reasoned = "# g's stub is wrong\ny = g()  # type: ignore[arg-type]\n"
    assert _ignores(reasoned) == [(2, "[arg-type]", "g's stub is wrong")]


def test_mypy_configuration_is_not_weakened() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert config["files"] == ["service"]
    sections = [config, *config.get("overrides", [])]
    weakened = [key for section in sections for key in WEAKENING if key in section]
    assert not weakened, f"mypy configuration hides errors: {weakened}"


def test_ci_runs_the_type_checker_after_the_tests() -> None:
    steps = [
        line.split("#")[0].strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    ]
    assert "make typecheck" in steps
    assert steps.index("make typecheck") > steps.index("make test")
