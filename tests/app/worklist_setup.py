"""Shared by the worklist tests (routes and browser): two studies, a real screening run."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import orjson
from typer.testing import CliRunner

from service.cli import app as cli
from service.demo import load_demo_bundles
from tests.protocol_copies import SECOND_ID, SEED_DIR, edit_json, second_protocol
from tests.screening_population import AS_OF, no_leukemia_bundle, write_ndjson

SEED_ID = "cd19-cart-rr-ball"
SECOND_QUESTIONNAIRE = "https://example.org/fhir/Questionnaire/second-trial-attestation"


def two_studies(tmp: Path) -> list[Path]:
    """The seed and a copy under another id whose attestations answer its own Questionnaire
    (so an attestation for one study cannot count for the other)."""
    second = second_protocol(tmp / "second")

    def own_questionnaire(q: dict) -> None:
        q["id"] = "second-trial-attestation"
        q["url"] = SECOND_QUESTIONNAIRE

    edit_json(second / "Questionnaire-cd19-cart-rr-ball-attestation.json", own_questionnaire)

    def own_name(study: dict) -> None:  # told apart on the page by its name, not only its id
        study["title"] = "Second trial (a test copy of the seed criteria)"
        study["extension"] = [e for e in study["extension"] if "label" not in e["url"].lower()]

    edit_json(second / "ResearchStudy-cd19-cart-rr-ball.json", own_name)
    return [SEED_DIR, second]


def screening_run(tmp: Path, synthetic: int = 4) -> Path:
    """``eligibility screen`` (the real command) over synthetic patients and one without ALL;
    returns its output folder."""
    from benchmarks.synthetic import make_patient

    bundles = {}
    for n in range(synthetic):
        data = make_patient(40 + 5 * n, anchor=AS_OF, seed=n, patient_id=f"scr-{n}")
        bundles[data.patient_id] = data.bundle
    bundles["scr-none"] = no_leukemia_bundle("scr-none")
    for pid, bundle in load_demo_bundles(AS_OF).items():  # every status, under other ids
        renamed = orjson.loads(orjson.dumps(bundle).replace(b"demo-", b"scr-demo-"))
        bundles["scr-" + pid] = renamed
    src = write_ndjson(bundles, tmp / "ndjson")
    out = tmp / "screening-out"
    result = CliRunner().invoke(
        cli,
        [
            "screen",
            "--ndjson",
            str(src),
            "--out",
            str(out),
            "--as-of",
            AS_OF.isoformat(),
            "--workers",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def csv_rows(out: Path) -> list[dict[str, str]]:
    with (out / "worklist.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def worklist_rows(html: str) -> list[dict[str, object]]:
    """Each worklist row's hooks: patient, study, status, open criteria codes."""
    rows = []
    for match in re.finditer(
        r'<tr data-candidate="([^"]+)" data-study="([^"]+)" data-candidate-status="([^"]+)"'
        r' data-open="(\d+)"(.*?)</tr>',
        html,
        re.S,
    ):
        pid, study, status, n_open, rest = match.groups()
        rows.append(
            {
                "patient": pid,
                "study": study,
                "status": status,
                "open": re.findall(r'data-open-criterion="([^"]+)"', rest),
                "n_open": int(n_open),
                "changed": rest.startswith(" data-changed"),
                "html": rest,
            }
        )
    return rows


__all__ = ["SECOND_ID", "SEED_ID", "csv_rows", "screening_run", "two_studies", "worklist_rows"]
