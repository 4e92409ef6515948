"""The manual's reference tables, generated from the code at build time (never copied by hand).

Each ``*_md`` function returns Markdown for one ``<!-- generated: NAME -->`` marker in a page
(``docs/hooks.py`` puts it there). The sources: the settings class, the rule registry and its
typed parameter models, the FastAPI app's OpenAPI document, the CDS prefetch templates of every
loaded protocol, and the benchmark's target definitions.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is not installed; the checkout is the source
    sys.path.insert(0, str(ROOT))

_COMMENT = re.compile(r"^\s*#\s?(.*)$")
_FIELD = re.compile(r"^\s{4}([a-z_][a-z0-9_]*)\s*:\s*[^=]")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source: the ``#`` lines right above it and the one after it.

    Section rulers (``# -- name ---``) are headings, not descriptions. Base classes first, so a
    subclass's comment wins."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.split(".")[0] not in ("service", "benchmarks"):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines:
            comment = _COMMENT.match(line)
            if comment:
                text = comment.group(1)
                above = [] if text.startswith("--") else [*above, text]
                continue
            field = _FIELD.match(line)
            if field:
                trailing = line.split("  # ", 1)[1] if "  # " in line else ""
                parts = [" ".join(above).strip(), trailing.strip()]
                found[field.group(1)] = "; ".join(p for p in parts if p)
            above = []
    return found


def _type_name(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else repr(annotation)
    text = re.sub(
        r"\b(?:typing|pathlib|pydantic\.types|[a-z_]+(?:\.[a-z_]+)*)\.(?=[A-Za-z])", "", text
    )
    return text.replace("NoneType", "None")


# -- settings ------------------------------------------------------------------------------


def settings_fields() -> dict[str, Any]:
    from service.settings import Settings

    return dict(Settings.model_fields)


def _default(info: Any) -> str:
    value = info.default_factory() if info.default_factory is not None else info.default
    if value is None:
        return "–"
    if isinstance(value, Path) and ROOT in value.parents:
        return f"`{value.relative_to(ROOT)}`"
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


def settings_md() -> str:
    from service.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    comments = field_comments(Settings)
    rows = [
        "| variable | type | default | meaning (from `service/settings.py`) |",
        "|---|---|---|---|",
    ]
    for name, info in Settings.model_fields.items():
        rows.append(
            f"| `{prefix}{name.upper()}` | `{_cell(_type_name(info.annotation))}` "
            f"| {_cell(_default(info))} | {_cell(comments.get(name, ''))} |"
        )
    return "\n".join(rows) + "\n"


def check_setting_names(names: Iterable[str]) -> list[str]:
    """The names (without prefix) that are not settings: a hand-written note naming a setting
    that no longer exists fails the build."""
    known = {n.upper() for n in settings_fields()}
    return sorted({n for n in names if n not in known})


# -- rule kinds ----------------------------------------------------------------------------


def _constraints(info: Any) -> list[str]:
    out = []
    for meta in info.metadata:
        kind = type(meta).__name__
        if kind == "Reads":
            out.append(
                {
                    "valueset": "a ValueSet (id or canonical URL)",
                    "criterion": "a criterion",
                    "member": "a member criterion",
                    "attestation_item": "a Questionnaire item linkId",
                }[meta.what]
            )
        elif kind in ("Ge", "Gt", "Le", "Lt"):
            sign = {"Ge": "≥", "Gt": ">", "Le": "≤", "Lt": "<"}[kind]
            out.append(f"{sign} {getattr(meta, kind.lower())}")
    return out


def _param_rows(model: type) -> list[str]:
    comments = field_comments(model)
    rows = []
    for name, info in model.model_fields.items():
        required = "required" if info.is_required() else f"default {_default(info)}"
        notes = [*_constraints(info), comments.get(name, "")]
        rows.append(
            f"| `{name}` | `{_cell(_type_name(info.annotation))}` | {required} "
            f"| {_cell('; '.join(n for n in notes if n))} |"
        )
    return rows


def _doc(obj: Any) -> str:
    """The first paragraph of the function's docstring, else of its module's."""
    doc = inspect.getdoc(obj) or inspect.getdoc(sys.modules.get(obj.__module__)) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def rule_kinds_md() -> str:
    from service.clinical.rules import load_all
    from service.clinical.rules.params import Quantity, QuantityRange

    rules = load_all()
    out = [
        f"{len(rules)} rule kinds. Quantities are tables: `{{value, unit}}` (`Quantity`) and "
        "`{low, high, unit}` (`QuantityRange`), units in UCUM.\n",
        "| rule | what it decides | reads | parameter model |",
        "|---|---|---|---|",
    ]
    for name in sorted(rules):
        r = rules[name]
        reads = ", ".join(sorted(r.reads)) or "–"
        out.append(
            f"| [`{name}`](#{name}) | {_cell(_doc(r.evaluate))} | {reads} | `{r.params.__name__}` |"
        )
    for name in sorted(rules):
        r = rules[name]
        out += ["", f"## `{name}` {{#{name}}}", "", _doc(r.evaluate) or "", ""]
        out.append(
            f"Evaluator `{r.evaluate.__module__}.{r.evaluate.__name__}`; parameters "
            f"`{r.params.__name__}`."
        )
        if r.params.model_fields:
            out += [
                "",
                "| parameter | type | | notes |",
                "|---|---|---|---|",
                *_param_rows(r.params),
            ]
        else:
            out += ["", "No parameters besides `members`."]
    for model in (Quantity, QuantityRange):
        out += [
            "",
            f"## `{model.__name__}`",
            "",
            "| field | type | | notes |",
            "|---|---|---|---|",
            *_param_rows(model),
        ]
    return "\n".join(out) + "\n"


# -- HTTP API ------------------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    from service.api import app

    return app.openapi()


def _schema_name(schema: dict[str, Any] | None) -> str:
    if not schema:
        return "–"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#schema-{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_schema_name(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_schema_name(schema.get('items'))}"
    return f"`{schema.get('type', 'object')}`"


def openapi_md(doc: dict[str, Any] | None = None) -> str:
    doc = doc or openapi_document()
    out = [
        f"{doc['info']['title']} {doc['info'].get('version', '')}",
        "",
        "| method | path | summary | parameters | body | responses |",
        "|---|---|---|---|---|---|",
    ]
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            params = (
                ", ".join(
                    f"`{p['name']}` ({p['in']}{', required' if p.get('required') else ''})"
                    for p in op.get("parameters", [])
                )
                or "–"
            )
            body = op.get("requestBody", {}).get("content", {})
            body_text = (
                ", ".join(f"`{ctype}` {_schema_name(c.get('schema'))}" for ctype, c in body.items())
                or "–"
            )
            responses = ", ".join(sorted(op.get("responses", {})))
            summary = op.get("summary") or (op.get("description") or "").split("\n")[0]
            out.append(
                f"| {method.upper()} | `{path}` | {_cell(summary)} | {_cell(params)} "
                f"| {_cell(body_text)} | {responses} |"
            )
    schemas = doc.get("components", {}).get("schemas", {})
    if schemas:
        out += ["", "## Schemas"]
    for name, schema in sorted(schemas.items()):
        out += ["", f"### `{name}` {{#schema-{name.lower()}}}", ""]
        if schema.get("description"):
            out += [_cell(schema["description"]), ""]
        props = schema.get("properties", {})
        if props:
            required = set(schema.get("required", []))
            out += ["| property | type | |", "|---|---|---|"]
            out += [
                f"| `{p}` | {_cell(_schema_name(s))} | {'required' if p in required else ''} |"
                for p, s in props.items()
            ]
    return "\n".join(out) + "\n"


# -- CDS Hooks prefetch --------------------------------------------------------------------


def cds_prefetch_md() -> str:
    from service.cds.router import service_id
    from service.fhir.queries import prefetch_templates
    from service.portfolio import load_portfolio

    out = []
    for protocol in load_portfolio():
        out += [f"### `{service_id(protocol)}`", "", "| key | template |", "|---|---|"]
        out += [
            f"| `{key}` | `{_cell(template)}` |"
            for key, template in prefetch_templates(protocol).items()
        ]
        out.append("")
    return "\n".join(out)


# -- benchmark targets ---------------------------------------------------------------------


def bench_targets_md() -> str:
    from benchmarks.targets import TARGETS

    rows = ["| id | case | measures | target | how |", "|---|---|---|---|---|"]
    for t in TARGETS:
        limit = (
            t.limit_text if t.limit is None else f"{t.limit:g}{(' ' + t.unit) if t.unit else ''}"
        )
        op = {"<=": "≤", ">=": "≥"}[t.op]
        rows.append(
            f"| `{t.id}` | `{t.case}` | {_cell(t.measure)} | {op} {_cell(limit)} | {_cell(t.how)} |"
        )
    return "\n".join(rows) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "settings": settings_md,
    "rule-kinds": rule_kinds_md,
    "openapi": openapi_md,
    "cds-prefetch": cds_prefetch_md,
    "bench-targets": bench_targets_md,
}
