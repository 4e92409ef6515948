"""FHIR references: one normal form for every way a reference can name a resource.

A reference is compared by its *key*: ``urn:uuid:…`` (lower case), or ``{base}/{Type}/{id}``
with the base's scheme and host in lower case, no trailing slash and no ``_history`` suffix,
or, when no server is known, ``{Type}/{id}``. A relative reference is read against the
server its entry came from (the entry's RESTful ``fullUrl``, else the server the data came
from), as the FHIR Bundle rules say; so ``Patient/1`` in an entry of another server is that
server's patient 1, not ours.

``ReferenceIndex`` resolves references inside one patient's data: by key (``fullUrl`` or
type/id), by a contained ``#id``, and by business identifier for conditional references
(``Practitioner?identifier=system|value``, as Synthea transaction Bundles write them) and
identifier-only references. It is the one place rules follow references, so a ``urn:uuid``
link resolves the same way for every rule.
"""

from __future__ import annotations

import re
from collections import defaultdict
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from service.copies import identical

Resource = dict[str, Any]

_ID = r"[A-Za-z0-9\-.]{1,64}"
_TYPE = r"[A-Z][A-Za-z]{1,63}"
_HISTORY = r"(?:/_history/[^/?#]+)?"
_RELATIVE = re.compile(rf"({_TYPE})/({_ID}){_HISTORY}/?")
_ABSOLUTE = re.compile(rf"((?i:https?)://[^?#\s]+?)/({_TYPE})/({_ID}){_HISTORY}/?")
_CONDITIONAL = re.compile(rf"({_TYPE})\?(.+)")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@lru_cache(maxsize=4096)  # a few servers per deployment; every reference reads one
def normalise_base(url: str | None) -> str | None:
    """A server base in one form: scheme and host lower case, no default port, no trailing /."""
    if not url or not url.lower().startswith(("http://", "https://")):
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not host:
        return None
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def split_restful(url: str) -> tuple[str, str, str] | None:
    """(base, type, id) of an absolute RESTful URL, the base normalised; else None."""
    m = _ABSOLUTE.fullmatch(url)
    if m is None:
        return None
    base = normalise_base(m.group(1))
    return (base, m.group(2), m.group(3)) if base else None


def entry_base(full_url: str | None) -> str | None:
    """The server base of an entry's RESTful fullUrl (``None`` for urn: or missing)."""
    if not full_url:
        return None
    parts = split_restful(full_url)
    return parts[0] if parts else None


def reference_key(reference: str, base: str | None) -> str | None:
    """The key of a literal reference read from an entry of server ``base`` (None: unknown).

    ``None`` for what is not a literal reference (conditional, contained, malformed).
    """
    head = reference[:9].lower()
    if head.startswith("urn:"):
        return reference.lower() if head == "urn:uuid:" else reference
    m = _RELATIVE.fullmatch(reference)
    if m is not None:
        return f"{base}/{m.group(1)}/{m.group(2)}" if base else f"{m.group(1)}/{m.group(2)}"
    parts = split_restful(reference)
    if parts is not None:
        return "/".join(parts)
    return None


def resource_keys(resource: Resource, full_url: str | None, home: str | None) -> list[str]:
    """Every key under which ``resource`` can be referenced."""
    keys: list[str] = []
    if full_url:
        key = reference_key(full_url, None)
        if key is not None:
            keys.append(key)
    rid, rtype = resource.get("id"), resource.get("resourceType")
    if isinstance(rid, str) and isinstance(rtype, str):
        base = entry_base(full_url) or home
        key = reference_key(f"{rtype}/{rid}", base)
        if key is not None and key not in keys:
            keys.append(key)
    return keys


def conditional(reference: str) -> tuple[str, str, str] | None:
    """(type, system, value) of ``Type?identifier=system|value``; None for anything else
    (other search parameters are not resolvable without the server)."""
    m = _CONDITIONAL.fullmatch(reference)
    if m is None:
        return None
    params = parse_qsl(m.group(2), keep_blank_values=True)
    if len(params) != 1 or params[0][0] != "identifier":
        return None
    system, sep, value = params[0][1].partition("|")
    if not sep or not system or not value:
        return None
    return m.group(1), system, value


def referenced_type(reference: str) -> str | None:
    """The resource type a literal or conditional reference names by its text, if any."""
    if m := _RELATIVE.fullmatch(reference):
        return m.group(1)
    if parts := split_restful(reference):
        return parts[1]
    if m := _CONDITIONAL.fullmatch(reference):
        return m.group(1)
    return None


def identifiers(resource: Resource) -> list[tuple[str, str]]:
    """(system, value) of each identifier with both parts."""
    out: list[tuple[str, str]] = []
    idents = resource.get("identifier")
    for ident in idents if isinstance(idents, list) else ():
        if isinstance(ident, dict):
            system, value = ident.get("system"), ident.get("value")
            if isinstance(system, str) and system and isinstance(value, str) and value:
                out.append((system, value))
    return out


class ReferenceIndex:
    """Resolve references among one patient's resources (see the module docstring)."""

    __slots__ = ("home", "_by_key", "_by_identifier", "_bases")

    def __init__(self, home: str | None) -> None:
        self.home = home  # the server the data came from, when known
        self._by_key: dict[str, Resource] = {}
        self._by_identifier: defaultdict[tuple[str, str, str], list[Resource]] = defaultdict(list)
        self._bases: dict[int, str] = {}  # id(resource) -> its entry's base, when not home

    def add(self, resource: Resource, full_url: str | None) -> None:
        """Index a resource; an identical copy of one already here (a resource two searches
        both included) is that one, so it does not make its identifier ambiguous."""
        keys = resource_keys(resource, full_url, self.home)
        for key in keys:
            seen = self._by_key.get(key)
            if seen is not None and seen is not resource and identical(seen, resource):
                for other in keys:  # its other names (a urn: fullUrl) name that one too
                    self._by_key.setdefault(other, seen)
                return
        base = entry_base(full_url)
        if base is not None and base != self.home:
            self._bases[id(resource)] = base
        for key in keys:
            self._by_key[key] = resource
        rtype = resource.get("resourceType")
        if isinstance(rtype, str) and rtype != "Observation":
            for system, value in identifiers(resource):
                found = self._by_identifier[(rtype, system, value)]
                if not any(r is resource for r in found):
                    found.append(resource)

    def base_of(self, resource: Resource | None) -> str | None:
        """The server a resource's relative references are read against."""
        if resource is None:
            return self.home
        return self._bases.get(id(resource), self.home)

    def key(self, reference: str, source: Resource | None = None) -> str | None:
        return reference_key(reference, self.base_of(source))

    def resolve(self, reference: Any, source: Resource | None = None) -> Resource | None:
        """The resource a Reference (or reference string) names, or None when it is not here.

        ``source`` is the resource holding the reference: its entry's server for relative
        references, its ``contained`` for ``#id``. Identifier references resolve only when
        exactly one resource of the type carries the identifier.
        """
        if isinstance(reference, dict):
            text = reference.get("reference")
            if not isinstance(text, str):
                return self.by_identifier(reference.get("type"), reference.get("identifier"))
            reference = text
        if not isinstance(reference, str) or not reference:
            return None
        if reference.startswith("#"):
            return _contained(source, reference[1:])
        key = self.key(reference, source)
        if key is not None:
            return self._by_key.get(key)
        if cond := conditional(reference):
            rtype, system, value = cond
            return self._unique(rtype, system, value)
        return None

    def by_identifier(self, rtype: Any, ident: Any) -> Resource | None:
        """The one resource of ``rtype`` with this identifier (system and value), if exactly one."""
        if not isinstance(rtype, str) or not isinstance(ident, dict):
            return None
        system, value = ident.get("system"), ident.get("value")
        if not (isinstance(system, str) and system and isinstance(value, str) and value):
            return None
        return self._unique(rtype, system, value)

    def _unique(self, rtype: str, system: str, value: str) -> Resource | None:
        found = self._by_identifier.get((rtype, system, value)) or []
        return found[0] if len(found) == 1 else None


def _contained(source: Resource | None, rid: str) -> Resource | None:
    if not isinstance(source, dict):
        return None
    contained = source.get("contained")
    for res in contained if isinstance(contained, list) else ():
        if isinstance(res, dict) and res.get("id") == rid:
            return res
    return None
