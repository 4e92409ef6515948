"""A read-only in-process FHIR server over the demo patients, used when no FHIR base is set.

It speaks enough real FHIR search (``patient``, ``code`` tokens, ``date``/``authored``
prefixes, ``questionnaire``, ``status``, ``_sort``, ``_count`` and ``link[next]`` paging with
``_offset``) that the service exercises the same client code paths as against HAPI, paging
included. Unknown search parameters get a 400, as on HAPI, so a bad query fails here first.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson

DEMO_BASE_URL = "http://demo.invalid/fhir"
FHIR_JSON = "application/fhir+json"
_TINY = timedelta(microseconds=1)

# Search parameter -> element holding the date, per resource type.
_DATE_PARAMS: dict[str, dict[str, str]] = {
    "Observation": {"date": "effective"},
    "Procedure": {"date": "performed"},
    "Consent": {"date": "dateTime"},
    "Condition": {"onset-date": "onset", "recorded-date": "recordedDate"},
    "QuestionnaireResponse": {"authored": "authored"},
}
_CODE_ELEMENT = {"code": "code", "category": "category", "scope": "scope"}
_TOKEN_PARAMS: dict[str, set[str]] = {
    "Observation": {"code", "category", "status"},
    "Condition": {"code", "category"},
    "Procedure": {"code", "status", "category"},
    "Consent": {"status", "category", "scope"},
    "QuestionnaireResponse": {"status"},
}
_COMMON = {"patient", "subject", "_count", "_offset", "_sort"}

Range = tuple[datetime, datetime]  # half-open [lo, hi)


def parse_range(value: str) -> Range | None:
    """A FHIR date/dateTime/instant as the span it covers (partial dates cover their period)."""
    try:
        if len(value) == 4:
            lo = datetime(int(value), 1, 1, tzinfo=UTC)
            return lo, lo.replace(year=lo.year + 1)
        if len(value) == 7:
            y, m = int(value[:4]), int(value[5:7])
            lo = datetime(y, m, 1, tzinfo=UTC)
            return lo, datetime(y + m // 12, m % 12 + 1, 1, tzinfo=UTC)
        if len(value) == 10:
            lo = datetime.fromisoformat(value).replace(tzinfo=UTC)
            return lo, lo + timedelta(days=1)
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
        return dt, dt + _TINY
    except ValueError:
        return None


def _element_range(resource: dict, element: str) -> Range | None:
    """``effective[x]``-style choice elements: dateTime, instant or Period."""
    for suffix in ("", "DateTime", "Instant", "Period"):
        value = resource.get(element + suffix)
        if isinstance(value, str):
            return parse_range(value)
        if isinstance(value, dict):
            start = parse_range(value["start"]) if value.get("start") else None
            end = parse_range(value["end"]) if value.get("end") else None
            if start or end:
                lo = start[0] if start else datetime.min.replace(tzinfo=UTC)
                hi = end[1] if end else datetime.max.replace(tzinfo=UTC)
                return lo, hi
    return None


def _date_matches(target: Range | None, search: str) -> bool:
    prefix, value = (search[:2], search[2:]) if search[:2].isalpha() else ("eq", search)
    span = parse_range(value)
    if target is None or span is None:
        return False
    (tlo, thi), (slo, shi) = target, span
    return {
        "eq": slo <= tlo and thi <= shi,
        "ge": thi > slo,
        "gt": thi > shi,
        "le": tlo < shi,
        "lt": tlo < slo,
    }.get(prefix, False)


def _split_unescaped(value: str, sep: str) -> list[str]:
    parts, buf, escaped = [], [], False
    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def _codings(value: Any) -> list[tuple[str | None, str | None]]:
    items = value if isinstance(value, list) else [value]
    out: list[tuple[str | None, str | None]] = []
    for item in items:
        if isinstance(item, str):
            out.append((None, item))
        elif isinstance(item, dict):
            out.extend((c.get("system"), c.get("code")) for c in item.get("coding") or [])
    return out


def _token_matches(resource: dict, param: str, search: str) -> bool:
    element = _CODE_ELEMENT.get(param, param)
    codings = _codings(resource.get(element))
    for alternative in _split_unescaped(search, ","):
        if "|" in alternative.replace("\\|", ""):
            system, code = _split_unescaped(alternative, "|")[:2]
        else:
            system, code = None, _split_unescaped(alternative, "|")[0]
        for csys, ccode in codings:
            if system not in (None, "") and csys != system:
                continue
            if system == "" and csys is not None:
                continue
            if code and ccode != code:
                continue
            return True
    return False


def _outcome(status: int, code: str, text: str) -> httpx.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return httpx.Response(status, content=orjson.dumps(body), headers={"content-type": FHIR_JSON})


class DemoStore:
    """Serve demo bundles (patient id -> collection Bundle) as a FHIR server would."""

    def __init__(
        self,
        bundles: dict[str, dict] | None = None,
        *,
        base_url: str = DEMO_BASE_URL,
        default_page_size: int = 20,
        max_page_size: int = 50,
        loader: Callable[[], dict[str, dict]] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._base_path = httpx.URL(self.base_url).path.rstrip("/") + "/"
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size
        self._loader = loader
        self._loaded_on: date | None = None
        self._patients: dict[str, dict] = {}
        self._resources: dict[str, list[tuple[str, dict]]] = {}  # type -> (patient id, res)
        if bundles is not None:
            self._index(bundles)

    def _index(self, bundles: dict[str, dict]) -> None:
        self._patients, self._resources = {}, {}
        for pid, bundle in bundles.items():
            for n, entry in enumerate(bundle.get("entry") or []):
                resource = dict(entry.get("resource") or {})
                rtype = resource.get("resourceType")
                if not rtype:
                    continue
                if rtype == "Patient":
                    self._patients[pid] = {**resource, "id": pid}
                    continue
                resource.setdefault("id", f"{pid}-{rtype.lower()}-{n}"[:64])
                self._resources.setdefault(rtype, []).append((pid, resource))

    def _refresh(self) -> None:
        """Demo dates are shifted to today: rebuild when the day changes."""
        if self._loader is not None and self._loaded_on != date.today():
            self._index(self._loader())
            self._loaded_on = date.today()

    # -- HTTP --------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        self._refresh()
        path = request.url.path
        if not path.startswith(self._base_path):
            return _outcome(404, "not-found", "unknown path")
        parts = [p for p in path[len(self._base_path) :].split("/") if p]
        params = list(request.url.params.multi_items())
        if request.method == "GET" and len(parts) == 2:
            return self._read(*parts)
        if request.method == "GET" and len(parts) == 1:
            return self._search(parts[0], params)
        if request.method == "POST" and len(parts) == 2 and parts[1] == "_search":
            form = parse_qsl(request.content.decode(), keep_blank_values=True)
            return self._search(parts[0], params + form)
        return _outcome(405, "not-supported", "this demo store is read-only")

    def _read(self, rtype: str, rid: str) -> httpx.Response:
        if rtype == "Patient":
            found = self._patients.get(rid)
        else:
            found = next((r for _, r in self._resources.get(rtype, []) if r["id"] == rid), None)
        if found is None:
            return _outcome(404, "not-found", f"{rtype} not found")
        return httpx.Response(200, content=orjson.dumps(found), headers={"content-type": FHIR_JSON})

    def _search(self, rtype: str, params: list[tuple[str, str]]) -> httpx.Response:
        date_params = _DATE_PARAMS.get(rtype, {})
        allowed = _COMMON | _TOKEN_PARAMS.get(rtype, set()) | set(date_params)
        if rtype == "QuestionnaireResponse":
            allowed |= {"questionnaire"}
        unknown = sorted({k for k, _ in params} - allowed)
        if unknown:
            return _outcome(400, "processing", f"Unknown search parameter {unknown[0]}")
        if rtype == "Patient":
            return _outcome(400, "not-supported", "Patient search is not supported here")

        candidates = list(self._resources.get(rtype, []))
        sort_key: str | None = None
        count, offset = self.default_page_size, 0
        for name, value in params:
            if name in ("patient", "subject"):
                pid = value.rsplit("/", 1)[-1]
                candidates = [(p, r) for p, r in candidates if p == pid]
            elif name in date_params:
                elem = date_params[name]
                candidates = [
                    (p, r) for p, r in candidates if _date_matches(_element_range(r, elem), value)
                ]
            elif name == "questionnaire":
                candidates = [
                    (p, r)
                    for p, r in candidates
                    if str(r.get("questionnaire", "")).split("|")[0] == value.split("|")[0]
                ]
            elif name in _TOKEN_PARAMS.get(rtype, set()):
                candidates = [(p, r) for p, r in candidates if _token_matches(r, name, value)]
            elif name == "_count":
                count = max(0, min(int(value), self.max_page_size)) if value.isdigit() else count
            elif name == "_offset":
                offset = int(value) if value.isdigit() else 0
            elif name == "_sort":
                sort_key = value

        matches = [r for _, r in candidates]
        if sort_key:
            name = sort_key.lstrip("-")
            elem = date_params.get(name)
            if elem is None:
                return _outcome(400, "processing", f"Cannot sort on {name}")
            with_date = [(r, _element_range(r, elem)) for r in matches]
            dated = sorted(
                (x for x in with_date if x[1]), key=lambda x: x[1][0], reverse=sort_key[0] == "-"
            )
            matches = [r for r, _ in dated] + [r for r, rng in with_date if rng is None]

        page = matches[offset : offset + count]
        keep = [(k, v) for k, v in params if k not in ("_offset", "_count")]
        links = [{"relation": "self", "url": self._url(rtype, keep, count, offset)}]
        if offset + count < len(matches) and count > 0:
            links.append({"relation": "next", "url": self._url(rtype, keep, count, offset + count)})
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{self.base_url}/{rtype}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in page
            ],
        }
        return httpx.Response(
            200, content=orjson.dumps(bundle), headers={"content-type": FHIR_JSON}
        )

    def _url(self, rtype: str, params: list[tuple[str, str]], count: int, offset: int) -> str:
        query = urlencode([*params, ("_count", str(count)), ("_offset", str(offset))])
        return f"{self.base_url}/{rtype}?{query}"


def _load_demo_bundles() -> dict[str, dict]:
    from service.demo import load_demo_bundles  # the lead's module; imported when first used

    return load_demo_bundles()


def demo_transport(bundles: dict[str, dict] | None = None, **kwargs: Any) -> httpx.MockTransport:
    """An httpx transport answering from the demo store (the built-in bundles by default)."""
    if bundles is None:
        store = DemoStore(loader=_load_demo_bundles, **kwargs)
    else:
        store = DemoStore(bundles, **kwargs)
    return httpx.MockTransport(store.handle)
