"""Structured JSON logs with a request id, and redaction at the root of the logging tree.

Callers log resource types and parameter names, never values. That is not enough on its own:
third-party libraries (stamina's retry warnings, httpx, uvicorn) log exception messages and
URLs that may carry a caller's token or a patient id. So every record, from any logger, is
scrubbed before any handler formats it:

* at creation (a ``LogRecordFactory``): the message is rendered and scrubbed, its ``args``
  dropped, an exception reduced to its type and stack frames (never its message, which may
  quote a header), stack info dropped;
* by a first root handler (``Scrubber``) that also scrubs the ``extra`` fields (stamina puts
  ``repr(exception)`` there) and turns uvicorn's access-log path into the route template.

Scrubbing removes bearer tokens, JWT-shaped strings, ``access_token=``-style pairs,
Authorization header values, query strings of URLs, ``Patient/<id>`` and every secret
registered at run time (``register_secret`` for the settings' tokens and keys,
``register_request_secret`` for a request's token and patient ids).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import unquote

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

REDACTED = "[redacted]"
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_SCRUBBED = "_scrubbed"  # marks a record whose message, args and exception are already safe

# -- what is never logged -------------------------------------------------------------------
_ID = r"[A-Za-z0-9\-.]{1,64}"
_FRESH = r"(?!\[?redacted\])"  # a value not already redacted: scrubbing twice changes nothing
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization / API key headers, in any quoting: keep the name, drop the value.
    (
        re.compile(
            r"(?i)((?:proxy-)?authorization|x-api-key|api[-_]?key)(['\"]?\s*[:=,]\s*[(\[]?\s*(?:b?['\"])?)"
            rf"(?:(?:bearer|basic|dpop)\s+)?{_FRESH}[^\s'\",;)\]}}]+"
        ),
        rf"\1\2{REDACTED}",
    ),
    (
        # 'Bearer <token>' (not the prose 'bearer token' of an error message)
        re.compile(rf"(?i)\b(bearer|dpop)(\s+|%20|\+)(?!tokens?(?:\s|$)){_FRESH}[^\s'\",;)\]}}]+"),
        rf"\1 {REDACTED}",
    ),
    (re.compile(r"\b(Basic)\s+[A-Za-z0-9+/=]{8,}"), rf"\1 {REDACTED}"),
    # key=value / "key": "value" pairs whose value is a credential.
    (
        re.compile(
            r"(?i)\b(access_token|refresh_token|id_token|client_assertion|client_secret|"
            r"assertion|password|passwd|secret|api_key|apikey|token)"
            rf"(['\"]?\s*[:=]\s*(?:b?['\"])?){_FRESH}[^\s'\"&,;)\]}}]+"
        ),
        rf"\1\2{REDACTED}",
    ),
    # JWTs (three base64url segments; the header always starts 'eyJ'), and other long
    # three-segment base64url strings that look like signed tokens.
    (re.compile(r"eyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]*)?"), REDACTED),
    (re.compile(r"\b[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}\b"), REDACTED),
    # Query strings of URLs (patient=, identifier=, subject= ...) and Patient/<id> paths.
    (re.compile(r"((?:https?:)?//[^\s?#'\"]*|/[^\s?#'\"]*)\?[^\s#'\"]*"), rf"\1?{REDACTED}"),
    (re.compile(rf"(?i)\b(Patient/){_ID}"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)\b(patient|subject|identifier|_id)=[^\s&'\"]+"), rf"\1={REDACTED}"),
)


# -- secrets known at run time --------------------------------------------------------------
class _Secrets:
    """Values to remove from every log line: the service's own (bounded LRU) + per request."""

    MAX_GLOBAL = 1024
    MIN_LENGTH = 1

    def __init__(self) -> None:
        self._global: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        with self._lock:
            for variant in _variants(value):
                self._global[variant] = None
                self._global.move_to_end(variant)
            while len(self._global) > self.MAX_GLOBAL:
                self._global.popitem(last=False)
            self._pattern = None

    def pattern(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._global:
                self._pattern = _alternation(self._global)
            return self._pattern


def _variants(value: str) -> set[str]:
    """The value as it may appear in a log line: raw, repr-escaped, JSON-escaped, as bytes."""
    out = {value, repr(value)[1:-1], ascii(value)[1:-1], json.dumps(value)[1:-1]}
    with suppress(UnicodeEncodeError, TypeError):  # a lone surrogate: the other forms apply
        out.add(repr(value.encode())[2:-1])
        out.add(orjson.dumps(value).decode()[1:-1])
    return {v for v in out if v}


def _alternation(values: Any) -> re.Pattern[str]:
    """One regex for all values, longest first; not inside a longer id-like word."""
    ordered = sorted(values, key=len, reverse=True)
    body = "|".join(re.escape(v) for v in ordered)
    return re.compile(rf"(?<![A-Za-z0-9\-.])(?:{body})(?![A-Za-z0-9\-.])")


class _Scope:
    """One request's secrets; shared by every task and thread the request starts."""

    __slots__ = ("values", "_pattern")

    def __init__(self) -> None:
        self.values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        self.values.update(_variants(value))
        self._pattern = None

    def pattern(self) -> re.Pattern[str] | None:
        if self._pattern is None and self.values:
            self._pattern = _alternation(self.values)
        return self._pattern


_secrets = _Secrets()
_request_secrets: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "request_secrets", default=None
)
MAX_SECRET_LENGTH = 4096  # longer values are refused as input long before they could be logged


def register_secret(value: str | None) -> None:
    """A value of the service itself (settings token, API key, SMART access token)."""
    if value and len(value) <= MAX_SECRET_LENGTH:
        _secrets.add(value)


def register_request_secret(value: Any) -> None:
    """A value of the current request (its token, its patient id); global outside a request."""
    if not isinstance(value, str) or not value or len(value) > MAX_SECRET_LENGTH:
        return
    scope = _request_secrets.get()
    if scope is None:
        register_secret(value)
    else:
        scope.add(value)


@contextmanager
def request_scope() -> Iterator[None]:
    """Per-request secrets live for the request (and every task or thread it starts)."""
    token = _request_secrets.set(_Scope())
    try:
        yield
    finally:
        _request_secrets.reset(token)


def scrub(text: str) -> str:
    """``text`` with every credential, query string, patient id and known secret removed."""
    pattern = _secrets.pattern()
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    scope = _request_secrets.get()
    scoped = scope.pattern() if scope is not None else None
    if scoped is not None:
        text = scoped.sub(REDACTED, text)
    for regex, replacement in _PATTERNS:
        text = regex.sub(replacement, text)
    return text


def _scrub_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    if isinstance(value, dict):
        return {scrub(str(k)): _scrub_value(v) for k, v in value.items()}
    return scrub(str(value))


# -- where scrubbing happens ----------------------------------------------------------------
_route_of: Callable[[str], str] | None = None


def set_route_resolver(resolver: Callable[[str], str] | None) -> None:
    """How to name a request path by its route template (the API app registers this)."""
    global _route_of
    _route_of = resolver


def _access_path(raw: Any) -> str:
    path = unquote(str(raw).split("?", 1)[0])
    return _route_of(path) if _route_of is not None else scrub(path)


def _scrub_record(record: logging.LogRecord) -> None:
    """Make ``record`` safe in place: message, args, exception, stack."""
    if getattr(record, _SCRUBBED, False):
        return
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        # uvicorn's access formatter unpacks these args: keep the shape, replace the path.
        client, method, path, version, status = record.args
        record.args = (client, method, _access_path(path), version, status)
        record.msg = str(record.msg)
    else:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string must not hide the record
            message = f"{record.msg!s} (unformattable arguments)"
        clean = scrub(message)
        if clean != message or not isinstance(record.args, tuple | None):
            record.msg, record.args = clean, None  # the args held what was removed
        # else: nothing to remove; the args stay for handlers that read them
    if record.exc_info and record.exc_info[0] is not None:
        exc_type, _, tb = record.exc_info
        frames = "".join(traceback.format_tb(tb)) if tb is not None else ""
        record.error = exc_type.__name__
        record.exc_text = f"Traceback (values withheld):\n{frames}{exc_type.__qualname__}"
        record.exc_info = None
    record.stack_info = None
    setattr(record, _SCRUBBED, True)


_base_factory = logging.getLogRecordFactory()


def _factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    _scrub_record(record)
    return record


class Scrubber(logging.Handler):
    """First handler on the root: scrubs each record in place before any other handler.

    It writes nothing. The extras (``extra=``) are only attached after a record is created,
    so they are scrubbed here; message and exception were already scrubbed by the factory.
    """

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)

    def handle(self, record: logging.LogRecord) -> bool:
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        _scrub_record(record)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and not key.startswith("_") and key != "error":
                record.__dict__[key] = _scrub_value(value)


class JsonFormatter(OrjsonFormatter):
    """One JSON object per line (python-json-logger over orjson), in our field names.

    Records reach it already scrubbed (factory + Scrubber); values are scrubbed once more here
    because a handler may be attached without the root's Scrubber in front of it.
    """

    converter = staticmethod(time.gmtime)  # what Formatter's class attribute does, spelled out

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "exc_info": "traceback",  # the scrubbed exc_text: frames, no values
            },
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        for key in [k for k in log_data if k.startswith("_")]:
            del log_data[key]
        log_data["message"] = scrub(str(log_data.get("message", "")))
        rid = request_id.get()
        if rid:
            log_data["request_id"] = rid
        for key, value in log_data.items():
            if key not in ("time", "level", "logger", "message", "traceback"):
                log_data[key] = _scrub_value(value)


_THIRD_PARTY = ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi", "httpx", "httpcore")


def install() -> None:
    """Redaction for every logger of this process (idempotent): record factory + Scrubber.

    Called by ``configure`` and by every entry point (API app, CLI) before anything logs.
    """
    if logging.getLogRecordFactory() is not _factory:
        logging.setLogRecordFactory(_factory)
    root = logging.getLogger()
    scrubbers = [h for h in root.handlers if isinstance(h, Scrubber)]
    others = [h for h in root.handlers if not isinstance(h, Scrubber)] or [_LastResort()]
    root.handlers[:] = [scrubbers[0] if scrubbers else Scrubber(), *others]


class _LastResort(logging.StreamHandler):
    """What Python prints with no handler configured (warnings, on the current stderr).

    The Scrubber counts as a handler, so without this the CLI's warnings would vanish.
    """

    def __init__(self) -> None:
        logging.Handler.__init__(self, logging.WARNING)

    @property
    def stream(self) -> Any:  # type: ignore[override]  # a property: sys.stderr as it is now
        return sys.stderr


def register_settings_secrets(settings: Any) -> None:
    """The service's own credentials from its settings (tokens, API keys)."""
    for name in ("fhir_token", "api_keys", "subscription_secret"):
        value = getattr(settings, name, None)
        for item in value if isinstance(value, list) else [value]:
            reveal = getattr(item, "get_secret_value", None)  # SecretStr, or a plain string
            secret = reveal() if callable(reveal) else item
            register_secret(secret if isinstance(secret, str) else None)


def configure(level: str = "INFO", stream: Any = None) -> None:
    """JSON lines on stderr at ``level`` for every logger, all through the root's Scrubber.

    Libraries' own handlers (uvicorn installs some) are removed so that nothing bypasses the
    root. httpx/httpcore and uvicorn's access log stay at WARNING unless DEBUG is asked for
    (then they log too, redacted like everything else).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [Scrubber(), handler]
    root.setLevel(level)
    install()
    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    for name in _THIRD_PARTY:
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    for noisy in ("uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.NOTSET if debug else logging.WARNING)
