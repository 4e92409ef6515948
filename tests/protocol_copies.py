"""Copies of the seed protocol folder, edited, for the portfolio and authoring-tool tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson

from fhir_mappings import DEFAULT_PROTOCOL

SEED_DIR = DEFAULT_PROTOCOL.parent
SECOND_ID = "second-trial"
SECOND_CANONICAL = "https://example.org/fhir/ResearchStudy/second-trial"
SECOND_NCT = "NCT00000001"


def copy_seed(dest: Path) -> Path:
    """The seed folder, unchanged, at ``dest``."""
    shutil.copytree(SEED_DIR, dest)
    return dest


def edit_toml(folder: Path, old: str, new: str) -> None:
    path = folder / "protocol.toml"
    text = path.read_text(encoding="utf-8")
    assert old in text, old  # the edit must apply, or the test proves nothing
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def edit_json(path: Path, change) -> None:
    data = orjson.loads(path.read_bytes())
    change(data)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


def second_protocol(dest: Path) -> Path:
    """A second trial: the seed's criteria under another id, canonical and a registry number."""
    copy_seed(dest)
    edit_toml(dest, 'id = "cd19-cart-rr-ball"', f'id = "{SECOND_ID}"')

    def restudy(study: dict) -> None:
        study["id"] = SECOND_ID
        study["identifier"] = [
            {"use": "official", "system": "urn:ietf:rfc:3986", "value": SECOND_CANONICAL},
            {"system": "https://clinicaltrials.gov", "value": SECOND_NCT},
        ]
        for ext in study["extension"]:
            if ext["url"].endswith("ResearchStudy.url"):
                ext["valueUri"] = SECOND_CANONICAL

    edit_json(dest / "ResearchStudy-cd19-cart-rr-ball.json", restudy)
    return dest
