"""summary.json and report.html: counts by status and the criterion funnel, from worklist.csv.

The funnel takes the top-level criteria in protocol order: of the patients not yet excluded,
how many this criterion excludes (not met) and how many it leaves open (undetermined). The
chart is static SVG inside the HTML file: no script, no CDN, opens offline.
"""

from __future__ import annotations

import csv
import html
from collections import Counter
from pathlib import Path
from typing import Any

from service.clinical.model import Outcome
from service.criterion_kind import has_exclusions, is_exclusion, kind_of
from service.protocol import Protocol
from service.screening.rows import ERROR_STATUS, criterion_columns

STATUSES = ("eligible", "potential-candidate", "ineligible", ERROR_STATUS)


def summarise(worklist: Path, protocol: Protocol, study: str | None = None) -> dict[str, Any]:
    """Stream the worklist once: status counts, per-criterion counts, the funnel (``study``:
    only that study's rows of a several-study worklist)."""
    codes = criterion_columns(protocol)
    top = [c.code for c in protocol.top_level]
    by_status: Counter[str] = Counter()
    per_code: dict[str, Counter[str]] = {c: Counter() for c in codes}
    excluded: Counter[str] = Counter()
    left_open: Counter[str] = Counter()
    with worklist.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        head = next(reader, None) or []
        index = {name: i for i, name in enumerate(head)}
        for row in reader:
            if len(row) != len(head):
                continue
            if study is not None and row[index["study"]] != study:
                continue
            status = row[index["status"]]
            by_status[status] += 1
            if status == ERROR_STATUS:
                continue
            for code in codes:
                per_code[code][row[index[code]]] += 1
            for code in top:  # first criterion not met excludes; those before may be open
                value = row[index[code]]
                if value == Outcome.NOT_MET:
                    excluded[code] += 1
                    break
                if value == Outcome.UNDETERMINED:
                    left_open[code] += 1
    evaluated = sum(n for s, n in by_status.items() if s != ERROR_STATUS)
    funnel = []
    remaining = evaluated
    kinds = has_exclusions(protocol)  # only then is the kind named (seed output unchanged)
    for code in top:
        step = {
            "criterion": code,
            "title": protocol.criterion_display(code),
            "before": remaining,
            "excluded": excluded[code],
            "open": left_open[code],
            "after": remaining - excluded[code],
        }
        if kinds:
            step["kind"] = kind_of(protocol, code)
        funnel.append(step)
        remaining -= excluded[code]
    return {
        "patients": sum(by_status.values()),
        "evaluated": evaluated,
        "failed": by_status[ERROR_STATUS],
        "byStatus": {s: by_status[s] for s in (*STATUSES, *sorted(set(by_status) - set(STATUSES)))},
        "funnel": funnel,
        "criteria": {code: {o.value: per_code[code][o.value] for o in Outcome} for code in codes},
    }


_COLOURS = {"in": "#2e8b57", "open": "#e0a100", "excluded": "#c0392b"}


def funnel_svg(funnel: list[dict[str, Any]], total: int) -> str:
    """Horizontal bars: each criterion's patients still in, split into excluded / open / rest."""
    label_w, bar_w, row_h, top = 330, 420, 26, 30
    width, height = label_w + bar_w + 170, top + row_h * len(funnel) + 10
    scale = bar_w / total if total else 0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="screening funnel" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="0" y="16" font-weight="bold">Patients still in before each criterion '
        f"(of {total} evaluated)</text>",
    ]
    for i, step in enumerate(funnel):
        y = top + i * row_h
        prefix = "Exclusion " if step.get("kind") == "exclusion" else ""
        label = html.escape(f"{prefix}{step['criterion']} {step['title']}"[:52])
        parts.append(f'<text x="0" y="{y + 16}">{label}</text>')
        x = label_w
        rest = step["before"] - step["excluded"] - step["open"]
        for kind, n in (("in", rest), ("open", step["open"]), ("excluded", step["excluded"])):
            w = round(n * scale, 1)
            if w > 0:
                parts.append(
                    f'<rect x="{x}" y="{y + 4}" width="{w}" height="{row_h - 8}" '
                    f'fill="{_COLOURS[kind]}"><title>{kind}: {n}</title></rect>'
                )
                x += w
        out = "applies to" if step.get("kind") == "exclusion" else "out,"
        parts.append(
            f'<text x="{label_w + bar_w + 8}" y="{y + 16}">{step["before"]} in, '
            f"{step['excluded']} {out} {step['open']} open</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def write_report(path: Path, summary: dict[str, Any], protocol: Protocol) -> None:
    esc = html.escape
    title = protocol.research_study.get("title", protocol.id)
    inputs = summary.get("input")
    input_html = f"<h2>Input</h2><pre>{esc(_pretty(inputs))}</pre>" if inputs else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Screening report: {esc(protocol.id)}</title>
{_STYLE}</head><body>
<h1>Screening report</h1>
<p>{esc(title)} (protocol {esc(protocol.id)} version {esc(protocol.version)}), as of
{esc(str(summary.get("asOf")))}. {summary["patients"]} patients: {summary["evaluated"]}
evaluated, {summary["failed"]} could not be evaluated.</p>
{_sections(summary, protocol, "h2", *_parts(summary, protocol))}
{input_html}
<p>Per-patient results: <code>results.ndjson</code>; worklist: <code>worklist.csv</code>.</p>
</body></html>
"""
    path.write_text(page, encoding="utf-8")


_STYLE = """<style>body{font-family:sans-serif;margin:2em;max-width:1000px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
</style>"""


def _sections(
    summary: dict[str, Any],
    protocol: Protocol,
    h: str,
    status_rows: str,
    legend: str,
    criteria_rows: str,
) -> str:
    """Status counts, funnel and criterion table of one study (``h``: their heading level)."""
    head = "<tr><th>status</th><th>patients</th></tr>"
    return f"""<{h}>By status</{h}><table>{head}{status_rows}</table>
<{h}>Funnel</{h}><p>{legend}</p>
{funnel_svg(summary["funnel"], summary["evaluated"])}
<{h}>Each criterion over all evaluated patients</{h}>
{_criteria_head(protocol)}
{criteria_rows}</table>{_exclusions_html(summary, protocol, h)}"""


def _parts(summary: dict[str, Any], protocol: Protocol) -> tuple[str, str, str]:
    """(status rows, legend, criterion rows) of one study's section."""
    esc = html.escape
    status_rows = "".join(
        f"<tr><td>{esc(s)}</td><td>{n}</td></tr>" for s, n in summary["byStatus"].items()
    )
    criteria_rows = "".join(
        f"<tr><td>{esc(code)}</td>{_kind_cell(protocol, code)}"
        f"<td>{esc(protocol.criterion_display(code))}</td>"
        + "".join(f"<td>{counts[o.value]}</td>" for o in Outcome)
        + "</tr>"
        for code, counts in summary["criteria"].items()
    )
    names = {"in": "still in", "open": "open (undetermined)", "excluded": "excluded (not met)"}
    legend = " ".join(
        f'<span style="color:{c}">&#9632;</span> {esc(names[k])}' for k, c in _COLOURS.items()
    )
    return status_rows, legend, criteria_rows


def write_studies_report(path: Path, summary: dict[str, Any], protocols: list[Protocol]) -> None:
    """Several studies: one section (``data-study``) per study, each with its own funnel."""
    esc = html.escape
    by_id = {p.id: p for p in protocols}
    sections = []
    for section in summary["studies"]:
        protocol = by_id[section["study"]]
        title = protocol.research_study.get("title", protocol.id)
        sections.append(
            f"""<section data-study="{esc(protocol.id)}">
<h2>{esc(title)}</h2>
<p>Protocol {esc(protocol.id)} version {esc(protocol.version)}: {section["patients"]} patients,
{section["evaluated"]} evaluated, {section["failed"]} could not be evaluated.</p>
{_sections(section, protocol, "h3", *_parts(section, protocol))}
</section>"""
        )
    inputs = summary.get("input")
    input_html = f"<h2>Input</h2><pre>{esc(_pretty(inputs))}</pre>" if inputs else ""
    ids = ", ".join(p.id for p in protocols)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Screening report: {esc(ids)}</title>
{_STYLE}</head><body>
<h1>Screening report</h1>
<p>{len(protocols)} studies ({esc(ids)}), as of {esc(str(summary.get("asOf")))}.
{summary["patients"]} patients, one worklist row per patient and study.</p>
{"".join(sections)}
{input_html}
<p>Per-patient, per-study results: <code>results.ndjson</code>; worklist:
<code>worklist.csv</code> (column <code>study</code>).</p>
</body></html>
"""
    path.write_text(page, encoding="utf-8")


_HEAD = "<tr><th>code</th><th>criterion</th><th>met</th><th>not met</th><th>undetermined</th></tr>"
_KIND_HEAD = (
    "<tr><th>code</th><th>kind</th><th>criterion</th><th>met (exclusion: ruled out)</th>"
    "<th>not met (exclusion: applies)</th><th>undetermined</th></tr>"
)


def _criteria_head(protocol: Protocol) -> str:
    return f"<table>{_KIND_HEAD if has_exclusions(protocol) else _HEAD}"


def _kind_cell(protocol: Protocol, code: str) -> str:
    return f"<td>{kind_of(protocol, code)}</td>" if has_exclusions(protocol) else ""


def _exclusions_html(summary: dict[str, Any], protocol: Protocol, h: str = "h2") -> str:
    """'Exclusion E3 applies: 4 patients (title)', one line per exclusion criterion."""
    lines = [
        f"<li>Exclusion {html.escape(code)} applies: {counts[Outcome.NOT_MET.value]} patients "
        f"({html.escape(protocol.criterion_display(code))}); "
        f"ruled out for {counts[Outcome.MET.value]}, "
        f"undetermined for {counts[Outcome.UNDETERMINED.value]}</li>"
        for code, counts in summary["criteria"].items()
        if is_exclusion(protocol, code)
    ]
    return f"\n<{h}>Exclusions</{h}><ul>{''.join(lines)}</ul>" if lines else ""


def _pretty(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, sort_keys=True)
