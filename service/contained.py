"""Results a panel holds as ``contained`` Observations named from ``hasMember`` (``#id``).

A common export shape: the members carry no ``subject`` (and often no date) of their own;
they are results of the container's patient and time, like components, and must take part
in "newest decides" like any other result. Each member becomes an Observation of its own
with what it lacks taken from its container (subject, effective[x]/issued, status), named
``{container reference}#{member id}`` in evidence. A contained resource that no hasMember
names is not a result (it may be a device, a specimen, a note); chains of member panels are
followed to ``MAX_DEPTH``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from service.resource_kinds import KINDS

Resource = dict[str, Any]

MAX_DEPTH = 4  # panel -> member panel -> ...: far beyond any real export
_TIMES = KINDS["Observation"].times
_EFFECTIVE = tuple(t for t in _TIMES if t.startswith("effective"))


def has_members(resource: Resource) -> bool:
    """Whether an Observation may hold contained results (cheap: no reference is read)."""
    return isinstance(resource.get("contained"), list) and isinstance(
        resource.get("hasMember"), list
    )


def member_results(container: Resource) -> Iterator[tuple[str, Resource]]:
    """``(#id, member)`` for each contained Observation the container's hasMember chain
    names, each once, with the container's subject, time and status filled in where the
    member has none."""
    contained = container.get("contained")
    if not isinstance(contained, list):
        return
    by_id = {
        r["id"]: r
        for r in contained
        if isinstance(r, dict)
        and r.get("resourceType") == "Observation"
        and isinstance(r.get("id"), str)
    }
    if not by_id:
        return
    seen: set[str] = set()
    level = [container]
    for _ in range(MAX_DEPTH):
        following: list[Resource] = []
        for parent in level:
            for rid in _member_ids(parent):
                member = by_id.get(rid)
                if member is None or rid in seen:
                    continue
                seen.add(rid)
                result = _as_result(member, parent)
                following.append(result)
                yield f"#{rid}", result
        if not following:
            return
        level = following


def _member_ids(parent: Resource) -> Iterator[str]:
    members = parent.get("hasMember")
    for ref in members if isinstance(members, list) else ():
        value = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(value, str) and value.startswith("#") and len(value) > 1:
            yield value[1:]


def _as_result(member: Resource, parent: Resource) -> Resource:
    """The member as a result of its own: what it does not say is its parent's."""
    result = dict(member)
    if "subject" not in result and "subject" in parent:
        result["subject"] = parent["subject"]
    if not any(t in result for t in _EFFECTIVE):
        for element in _TIMES:
            if element in parent and element not in result:
                result[element] = parent[element]
    if "status" not in result and "status" in parent:
        result["status"] = parent["status"]
    return result
