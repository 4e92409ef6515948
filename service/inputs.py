"""Shape checks for what callers send, in one place, before anything reads it.

Every request body, query parameter and identifier is checked here (or in the CDS Hooks
pydantic models, which call these helpers), so the code behind can trust the shapes it gets
and bad input is a clear 400, never a 500. Error messages name the element and the JSON type
found, never the value: a caller's 1 MB string is not echoed back.
"""

from __future__ import annotations

import re
from typing import Any

from service import logs
from service.errors import ConfigurationError
from service.record import InputError

FHIR_ID_PATTERN = r"[A-Za-z0-9\-.]{1,64}"
_FHIR_ID = re.compile(FHIR_ID_PATTERN)
_URN_UUID = re.compile(r"urn:uuid:[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}")
# RFC 6750 section 2.1: the only characters a Bearer token can carry in a header.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN_LENGTH = 16_384
MAX_FULL_URL = 4096  # an entry's fullUrl may become a reference in the result
MAX_BUNDLE_NESTING = 4  # a batch-response holds Bundles; deeper nesting is not real data
FHIR_ID_RULE = "[A-Za-z0-9-.]{1,64}, not '.' or '..'"


def is_fhir_id(value: Any) -> bool:
    """A FHIR resource id, safe as one URL path segment ('.' and '..' would move the path)."""
    return isinstance(value, str) and value not in (".", "..") and bool(_FHIR_ID.fullmatch(value))


def check_patient_id(value: Any, where: str = "the patient id") -> str:
    """``value`` if it is a FHIR id, else a 400 that does not repeat it."""
    if not is_fhir_id(value):
        raise InputError(f"{where} is not a valid FHIR id ({FHIR_ID_RULE})")
    return value


def check_patient_selector(value: Any, where: str = "the patient id") -> str:
    """Which Patient of a posted Bundle to evaluate: its id, or the ``urn:uuid:`` fullUrl of
    an entry without id (Synthea writes those); anything else is a 400 that does not repeat it.
    """
    if isinstance(value, str) and _URN_UUID.fullmatch(value):
        return value
    if not is_fhir_id(value):
        raise InputError(f"{where} is not a valid FHIR id ({FHIR_ID_RULE}) or urn:uuid")
    return value


def is_bearer_token(value: str) -> bool:
    """A token that can be sent as ``Authorization: Bearer <token>`` (RFC 6750 b64token)."""
    return len(value) <= MAX_TOKEN_LENGTH and bool(_B64TOKEN.fullmatch(value))


def check_settings(settings: Any) -> None:
    """Refuse at start what would otherwise fail every request (e.g. a token with a newline)."""
    max_body = getattr(settings, "max_body_bytes", 0)
    if getattr(settings, "max_decoding_bytes", max_body) < max_body:
        raise ConfigurationError(
            "ELIGIBILITY_MAX_DECODING_BYTES must be at least ELIGIBILITY_MAX_BODY_BYTES (else "
            "the largest accepted body could never be decoded alongside another)"
        )
    if getattr(settings, "max_bundle_entries", 1) < 1:
        raise ConfigurationError("ELIGIBILITY_MAX_BUNDLE_ENTRIES must be at least 1")
    token = getattr(settings, "fhir_token", None)
    if token is not None and not is_bearer_token(token.get_secret_value()):
        raise ConfigurationError(
            "ELIGIBILITY_FHIR_TOKEN cannot be sent as a Bearer token (RFC 6750 characters "
            "only: a trailing newline or a space?)"
        )


def json_type(value: Any) -> str:
    """The JSON type of ``value`` for an error message (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def type_name(value: Any) -> str:
    """A resourceType fit for a message: a type name, else what kind of value it is."""
    if isinstance(value, str) and _TYPE_NAME.fullmatch(value):
        return repr(value)
    return f"{json_type(value)} that is not a resource type"


def brief(value: Any, limit: int = 32) -> str:
    """A short repr for messages: at most ``limit`` characters of a string, else its type."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    return json_type(value)


def bundle_envelope_error(bundle: Any, where: str = "the input") -> str | None:
    """Why ``bundle`` cannot be read as a Bundle's envelope, or None.

    Checks what every reader relies on: an object whose ``resourceType`` is 'Bundle', whose
    ``entry`` (if any) is an array, entries' ``fullUrl`` of sane length, Patients' ids that
    are FHIR ids (the subject's id is repeated in every result), and Bundles nested in
    entries (batch-response) likewise. A single malformed entry is not an envelope error:
    it is skipped with a warning later. Patient ids seen are registered with the log
    redactor on the way.
    """
    stack = [(bundle, where, 0)]
    while stack:
        node, path, depth = stack.pop()
        if not isinstance(node, dict) or node.get("resourceType") != "Bundle":
            found = (
                type_name(node.get("resourceType")) if isinstance(node, dict) else json_type(node)
            )
            return f"expected a FHIR Bundle in {path}, got {found}"
        entries = node.get("entry")
        if entries is None:
            continue
        if not isinstance(entries, list):
            return f"Bundle.entry in {path} is {json_type(entries)}, not an array"
        positions = getattr(node, "positions", None) or range(len(entries))  # service.lean
        for i, entry in zip(positions, entries, strict=True):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            error = _entry_error(entry, resource)
            if error is not None:
                return f"{path}, entry {i}: {error}"
            if resource.get("resourceType") == "Bundle":
                if depth + 1 >= MAX_BUNDLE_NESTING:
                    return f"{where} nests Bundles more than {MAX_BUNDLE_NESTING} deep"
                stack.append((resource, f"{path}, entry {i}", depth + 1))
    return None


def _entry_error(entry: dict[str, Any], resource: dict[str, Any]) -> str | None:
    full_url = entry.get("fullUrl")
    if isinstance(full_url, str) and len(full_url) > MAX_FULL_URL:
        return f"fullUrl is longer than {MAX_FULL_URL} characters"
    if resource.get("resourceType") == "Patient":
        pid = resource.get("id")
        logs.register_request_secret(pid)  # a patient's identifiers never reach a log line
        logs.register_request_secret(full_url)
        if isinstance(pid, str) and not is_fhir_id(pid):
            return f"the Patient's id is not a valid FHIR id ({FHIR_ID_RULE})"
    return None


def check_bundle(bundle: Any, where: str = "the input") -> dict[str, Any]:
    """``bundle`` if its envelope is readable, else a 400 naming what is wrong."""
    error = bundle_envelope_error(bundle, where)
    if error is not None:
        raise InputError(error)
    return bundle


_SAFE_NAME = re.compile(r"[A-Za-z0-9_\-]{1,40}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")


def validation_message(what: str, errors: list[Any]) -> str:
    """A pydantic error as one line; element names only when they look like names."""
    first = errors[0] if errors else {}
    loc = first.get("loc", ()) if isinstance(first, dict) else ()
    parts = [str(p) if isinstance(p, int) or _SAFE_NAME.fullmatch(str(p)) else "<key>" for p in loc]
    msg = str(first.get("msg", "") if isinstance(first, dict) else "")[:200]
    return f"invalid {what}: {'.'.join(parts)}: {msg}".rstrip(": ")


def request_id(value: str | None) -> str | None:
    """A caller's X-Request-Id if it is a plain token (it is logged and echoed), else None."""
    return value if value is not None and _REQUEST_ID.fullmatch(value) else None
