"""A read-only in-process FHIR server over the demo patients, used when no FHIR base is set.

It speaks enough real FHIR search (``patient``, ``code`` tokens, ``date``/``authored``
prefixes, ``questionnaire``, ``status``, ``_sort``, ``_count`` and ``link[next]`` paging with
``_offset``, GET or POST ``{type}/_search``) that the service exercises the same client code
paths as against HAPI, paging included. Unknown search parameters and malformed dates get a
400, as on HAPI, so a bad query fails here first. The benchmark serves the same store over
loopback HTTP (benchmarks/fhir_server.py), so there is one search implementation.

Resources are indexed by type and patient, and a search's matches are kept (bounded LRU) so
walking its pages does not redo the search: the benchmark's patients hold 20,000 Observations.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson

from service.contained import member_results
from service.errors import ServiceError

DEMO_BASE_URL = "http://demo.invalid/fhir"
FHIR_JSON = "application/fhir+json"
_TINY = timedelta(microseconds=1)

Resource = dict[str, Any]
Params = list[tuple[str, str]]
Range = tuple[datetime, datetime]  # half-open [lo, hi)

# Search parameter -> element holding the date, per resource type.
_DATE_PARAMS: dict[str, dict[str, str]] = {
    "Observation": {"date": "effective"},
    "Procedure": {"date": "performed"},
    "DiagnosticReport": {"date": "effective"},
    "Consent": {"date": "dateTime"},
    "Condition": {"onset-date": "onset", "recorded-date": "recordedDate"},
    "QuestionnaireResponse": {"authored": "authored"},
}
_CODE_ELEMENT = {"code": "code", "category": "category", "scope": "scope"}
_COMBO = "combo-code"  # Observation.code | Observation.component.code
_TOKEN_PARAMS: dict[str, set[str]] = {
    "Observation": {"code", _COMBO, "category", "status"},
    "Condition": {"code", "category"},
    "Procedure": {"code", "status", "category"},
    "DiagnosticReport": {"code", "status", "category"},
    "Consent": {"status", "category", "scope"},
    "QuestionnaireResponse": {"status"},
    "MedicationRequest": set(),
    "MedicationAdministration": set(),
    "MedicationStatement": set(),
    "MedicationDispense": set(),
}
# ``_include`` values served: the Medication a medication resource's medicationReference names
_INCLUDES = {f"{t}:medication" for t in _TOKEN_PARAMS if t.startswith("Medication")}
_PATIENT_PARAMS = {"patient", "subject"}
_PAGING = {"_count", "_offset"}
_COMMON = _PATIENT_PARAMS | _PAGING | {"_sort", "_include"}


class SearchError(ServiceError, ValueError):
    """A search this store does not support; answered with HTTP 400, as HAPI would."""

    def __init__(self, message: str, code: str = "processing") -> None:
        super().__init__(message)
        self.code = code


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


def _element_range(resource: Resource, element: str) -> Range | None:
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


_DATE_TESTS: dict[str, Callable[[Range, Range], bool]] = {
    "eq": lambda t, s: s[0] <= t[0] and t[1] <= s[1],
    "ge": lambda t, s: t[1] > s[0],
    "gt": lambda t, s: t[1] > s[1],
    "le": lambda t, s: t[0] < s[1],
    "lt": lambda t, s: t[0] < s[0],
}


def _date_test(search: str) -> Callable[[Range | None], bool]:
    """A predicate over a resource's date span for ``ge2025-01-01`` and friends."""
    prefix, value = (search[:2], search[2:]) if search[:2].isalpha() else ("eq", search)
    span = parse_range(value)
    if span is None:
        raise SearchError(f"Invalid date {search!r}")
    test = _DATE_TESTS.get(prefix)
    if test is None:
        raise SearchError(f"Unsupported date prefix {prefix!r}", "not-supported")
    return lambda target: target is not None and test(target, span)


def _split_unescaped(value: str, sep: str, *, unescape: bool = True) -> list[str]:
    """Split on ``sep`` where it is not escaped with a backslash (FHIR search escaping)."""
    parts, buf, escaped = [], [], False
    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
            if not unescape:
                buf.append(ch)
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


def _token_test(param: str, search: str) -> Callable[[Resource], bool]:
    """A predicate for ``code=[system]|[code],...``, the search value parsed once."""
    alternatives: list[tuple[str | None, str]] = []
    for alternative in _split_unescaped(search, ",", unescape=False):
        parts = _split_unescaped(alternative, "|")
        alternatives.append((parts[0], parts[1]) if len(parts) > 1 else (None, parts[0]))
    element = "code" if param == _COMBO else _CODE_ELEMENT.get(param, param)

    def system_ok(system: str | None, csys: str | None) -> bool:
        return system is None or (csys is None if system == "" else csys == system)

    def codings_of(resource: Resource) -> list[tuple[str | None, str | None]]:
        found = _codings(resource.get(element))
        if param == _COMBO:
            parts = resource.get("component")
            for part in parts if isinstance(parts, list) else ():
                if isinstance(part, dict):
                    found.extend(_codings(part.get("code")))
            # a panel's contained results (service.contained), as a server that indexes
            # contained resources (``_contained``) finds its container
            for _, member in member_results(resource):
                found.extend(codings_of(member))
        return found

    def matches(resource: Resource) -> bool:
        return any(
            system_ok(system, csys) and (not code or ccode == code)
            for csys, ccode in codings_of(resource)
            for system, code in alternatives
        )

    return matches


class DemoStore:
    """Serve collection Bundles (patient id -> Bundle) as a read-only FHIR server would.

    ``handle`` is an httpx transport handler; ``read``/``search``/``page`` answer in-process.
    """

    def __init__(
        self,
        bundles: dict[str, dict] | None = None,
        *,
        base_url: str = DEMO_BASE_URL,
        default_page_size: int = 20,
        max_page_size: int = 50,
        loader: Callable[[], dict[str, dict]] | None = None,
        cache_size: int = 128,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._base_path = httpx.URL(self.base_url).path.rstrip("/") + "/"
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size
        self.cache_size = cache_size
        self._loader = loader
        self._loaded_on: date | None = None
        self._lock = threading.Lock()
        self._index({} if bundles is None else bundles)

    def _index(self, bundles: dict[str, dict]) -> None:
        patients: dict[str, Resource] = {}
        by_id: dict[tuple[str, str], Resource] = {}
        by_type: dict[str, list[tuple[str, Resource]]] = {}  # type -> (patient id, resource)
        by_owner: dict[tuple[str, str], list[tuple[str, Resource]]] = {}
        for pid, bundle in bundles.items():
            for n, entry in enumerate(bundle.get("entry") or []):
                resource = dict(entry.get("resource") or {})
                rtype = resource.get("resourceType")
                if not rtype:
                    continue
                if rtype == "Patient":
                    patients[pid] = {**resource, "id": pid}
                    continue
                resource.setdefault("id", f"{pid}-{rtype.lower()}-{n}"[:64])
                by_id[(rtype, resource["id"])] = resource
                by_type.setdefault(rtype, []).append((pid, resource))
                by_owner.setdefault((rtype, pid), []).append((pid, resource))
        with self._lock:
            self._patients, self._by_id = patients, by_id
            self._by_type, self._by_owner = by_type, by_owner
            self._ranges: dict[tuple[int, str], Range | None] = {}
            self._cache: OrderedDict[tuple, list[Resource]] = OrderedDict()

    def _refresh(self) -> None:
        """Demo dates are shifted to today: rebuild when the day changes."""
        if self._loader is not None and self._loaded_on != date.today():
            self._index(self._loader())
            self._loaded_on = date.today()

    # -- in-process API -----------------------------------------------------------------------
    def read(self, rtype: str, rid: str) -> Resource | None:
        self._refresh()
        if rtype == "Patient":
            return self._patients.get(rid)
        return self._by_id.get((rtype, rid))

    def search(self, rtype: str, params: Params) -> list[Resource]:
        """Every match of a search in the requested order; paging parameters are ignored."""
        self._refresh()
        key = (rtype, tuple(sorted(p for p in params if p[0] not in _PAGING)))
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
        found = self._search(rtype, params)
        with self._lock:
            self._cache[key] = found
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return found

    def prefetch(self, templates: dict[str, str], patient_id: str) -> dict[str, Any]:
        """CDS Hooks prefetch as an EHR fills these templates from this store: each read,
        and each search as one complete searchset (no paging)."""
        from service.fhir.queries import PATIENT_TOKEN

        filled: dict[str, Any] = {}
        for key, template in templates.items():
            path, _, query = template.replace(PATIENT_TOKEN, patient_id).partition("?")
            parts = path.strip("/").split("/")
            if len(parts) == 2:
                filled[key] = self.read(parts[0], parts[1])
                continue
            asked = parse_qsl(query, keep_blank_values=True)
            found = self.search(parts[0], asked)
            filled[key] = {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(found),
                "entry": [
                    {"fullUrl": f"{self.base_url}/{r['resourceType']}/{r['id']}", "resource": r}
                    for r in found + self.included(asked, found)
                ],
            }
        return filled

    def page(self, rtype: str, params: Params) -> Resource:
        """One searchset page with ``self`` and (when more remain) ``next`` links."""
        count, offset = self.default_page_size, 0
        for name, value in params:
            if name == "_count" and value.isdigit():
                count = min(int(value), self.max_page_size)
            elif name == "_offset" and value.isdigit():
                offset = int(value)
        matches = self.search(rtype, params)
        keep = [(k, v) for k, v in params if k not in _PAGING]
        links = [{"relation": "self", "url": self._url(rtype, keep, count, offset)}]
        if count > 0 and offset + count < len(matches):
            links.append({"relation": "next", "url": self._url(rtype, keep, count, offset + count)})
        return {
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
                for r in matches[offset : offset + count]
            ]
            + [
                {
                    "fullUrl": f"{self.base_url}/Medication/{r['id']}",
                    "resource": r,
                    "search": {"mode": "include"},
                }
                for r in self.included(params, matches[offset : offset + count])
            ],
        }

    def included(self, params: Params, matches: list[Resource]) -> list[Resource]:
        """The Medications ``_include=...:medication`` asks for: those the matches'
        ``medicationReference`` names (``Medication/id`` or an absolute URL), each once."""
        if not any(k == "_include" and v in _INCLUDES for k, v in params):
            return []
        found: dict[str, Resource] = {}
        for r in matches:
            ref = r.get("medicationReference")
            target = ref.get("reference") if isinstance(ref, dict) else None
            if not isinstance(target, str) or target.startswith("#"):
                continue
            parts = target.rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2] == "Medication":
                med = self._by_id.get(("Medication", parts[-1]))
                if med is not None:
                    found.setdefault(parts[-1], med)
        return list(found.values())

    def capability(self) -> Resource:
        """``GET metadata``: what this store can search, so clients and probes can ask."""
        resources = [{"type": "Patient", "interaction": [{"code": "read"}]}]
        for rtype, tokens in _TOKEN_PARAMS.items():
            names = sorted(_PATIENT_PARAMS | tokens | set(_DATE_PARAMS.get(rtype, {})))
            names += ["questionnaire"] if rtype == "QuestionnaireResponse" else []
            resources.append(
                {
                    "type": rtype,
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": [{"name": n} for n in names],
                }
            )
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": date.today().isoformat(),
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [{"mode": "server", "resource": resources}],
        }

    # -- HTTP --------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if not path.startswith(self._base_path):
            return _outcome(404, "not-found", "unknown path")
        parts = [p for p in path[len(self._base_path) :].split("/") if p]
        params = list(request.url.params.multi_items())
        if request.method == "GET" and parts == ["metadata"]:
            return _json(self.capability())
        if request.method == "GET" and len(parts) == 2:
            found = self.read(*parts)
            return _json(found) if found else _outcome(404, "not-found", f"{parts[0]} not found")
        if request.method == "GET" and len(parts) == 1:
            return self._answer_search(parts[0], params)
        if request.method == "POST" and len(parts) == 2 and parts[1] == "_search":
            form = parse_qsl(request.content.decode(), keep_blank_values=True)
            return self._answer_search(parts[0], params + form)
        return _outcome(405, "not-supported", "this demo store is read-only")

    def _answer_search(self, rtype: str, params: Params) -> httpx.Response:
        try:
            return _json(self.page(rtype, params))
        except SearchError as exc:
            return _outcome(400, exc.code, str(exc))

    # -- search ------------------------------------------------------------------------------
    def _search(self, rtype: str, params: Params) -> list[Resource]:
        date_params = _DATE_PARAMS.get(rtype, {})
        tokens = _TOKEN_PARAMS.get(rtype, set())
        allowed = _COMMON | tokens | set(date_params)
        if rtype == "QuestionnaireResponse":
            allowed |= {"questionnaire"}
        unknown = sorted({k.removesuffix(":missing") for k, _ in params} - allowed)
        if unknown:
            raise SearchError(f"Unknown search parameter {unknown[0]}")
        for name, value in params:
            if name == "_include" and value not in _INCLUDES:
                raise SearchError(f"Unknown _include {value}")
        if rtype == "Patient":
            raise SearchError("Patient search is not supported here", "not-supported")

        owners = {v.rsplit("/", 1)[-1] for k, v in params if k in _PATIENT_PARAMS}
        if len(owners) > 1:
            return []
        if owners:
            candidates = [r for _, r in self._by_owner.get((rtype, owners.pop()), [])]
        else:
            candidates = [r for _, r in self._by_type.get(rtype, [])]
        sort_key: str | None = None
        for name, value in params:
            if name.endswith(":missing") and name.removesuffix(":missing") in date_params:
                if value not in ("true", "false"):
                    raise SearchError(f"Invalid :missing value {value!r}")
                elem, missing = date_params[name.removesuffix(":missing")], value == "true"
                candidates = [r for r in candidates if (self._range(r, elem) is None) == missing]
            elif name in date_params:
                date_test, elem = _date_test(value), date_params[name]
                candidates = [r for r in candidates if date_test(self._range(r, elem))]
            elif name == "questionnaire":
                wanted = value.split("|")[0]
                candidates = [
                    r for r in candidates if str(r.get("questionnaire", "")).split("|")[0] == wanted
                ]
            elif name in tokens:
                token_test = _token_test(name, value)
                candidates = [r for r in candidates if token_test(r)]
            elif name == "_sort":
                sort_key = value

        if not sort_key:
            return candidates
        sort_elem = date_params.get(sort_key.lstrip("-"))
        if sort_elem is None:
            raise SearchError(f"Cannot sort on {sort_key.lstrip('-')}")
        spans = [(r, self._range(r, sort_elem)) for r in candidates]
        dated = sorted(
            ((r, s) for r, s in spans if s), key=lambda x: x[1][0], reverse=sort_key[0] == "-"
        )
        return [r for r, _ in dated] + [r for r, s in spans if s is None]

    def _range(self, resource: Resource, element: str) -> Range | None:
        """A resource's date span, parsed once per store (sorting and filters reuse it)."""
        key = (id(resource), element)
        if key not in self._ranges:
            self._ranges[key] = _element_range(resource, element)
        return self._ranges[key]

    def _url(self, rtype: str, params: Params, count: int, offset: int) -> str:
        query = urlencode([*params, ("_count", str(count)), ("_offset", str(offset))])
        return f"{self.base_url}/{rtype}?{query}"


def _json(body: Resource) -> httpx.Response:
    return httpx.Response(200, content=orjson.dumps(body), headers={"content-type": FHIR_JSON})


def _outcome(status: int, code: str, text: str) -> httpx.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return httpx.Response(status, content=orjson.dumps(body), headers={"content-type": FHIR_JSON})


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
