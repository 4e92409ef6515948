"""MkDocs hooks: fill each ``<!-- generated: NAME -->`` marker from the code, add openapi.json.

Registered in ``mkdocs.yml`` (``hooks:``); the generators are in ``docs/gen_reference.py``. An
unknown marker, or a settings note naming a setting that does not exist, fails the build.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location(
    "gen_reference", Path(__file__).with_name("gen_reference.py")
)
assert _spec and _spec.loader
gen = importlib.util.module_from_spec(_spec)
sys.modules["gen_reference"] = gen
_spec.loader.exec_module(gen)

MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")
NOTES = "<!-- settings-notes:"
_cache: dict[str, str] = {}


class GenerationError(Exception):
    """A marker the generators do not know, or a hand-written note that names no setting."""


def _generated(name: str) -> str:
    if name not in gen.GENERATORS:
        raise GenerationError(f"unknown generated section {name!r}")
    if name not in _cache:
        _cache[name] = gen.GENERATORS[name]()
    return _cache[name]


def _check_notes(markdown: str, page: str) -> None:
    """Every backticked name in the first column of the notes table must be a setting."""
    names = []
    for line in markdown.split(NOTES, 1)[1].splitlines():
        if line.startswith("| `"):
            names += re.findall(r"`([A-Z_]+)`", line.split("|")[1])
    unknown = gen.check_setting_names(names)
    if unknown:
        raise GenerationError(f"{page}: notes name settings that do not exist: {unknown}")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if NOTES in markdown:
        _check_notes(markdown, page.file.src_uri)
    return MARKER.sub(lambda m: _generated(m.group(1)), markdown)


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    document = json.dumps(gen.openapi_document(), indent=2)
    files.append(File.generated(config, "openapi.json", content=document))
    return files
