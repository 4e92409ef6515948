"""Server-side sessions for the web app: the cookie carries only a signed session id.

Why server-side: a SMART access token must never reach the browser (not in a cookie, a URL
or a page), so it lives here, keyed by a random id. The store is per process (in memory);
several replicas need sticky sessions. Sessions end after an idle period, at an absolute
maximum age, and no later than the access token they hold.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

COOKIE = "cart_app_session"
COOKIE_PATH = "/app"
MAX_SESSIONS = 10_000  # a bound on memory: the oldest sessions are dropped first
MAX_PENDING_LOGINS = 5  # launches in flight per session (state -> PKCE verifier)


@dataclass
class PendingLogin:
    """One authorization request in flight: what the callback needs to finish it."""

    iss: str
    token_endpoint: str
    code_verifier: str
    redirect_uri: str
    created: float = field(default_factory=time.time)


@dataclass
class Session:
    id: str
    csrf: str
    created: float
    last_seen: float
    expires_at: float  # absolute end (session max age, or the token's expiry)
    demo: bool = False
    # SMART: set by the callback, never sent to the browser
    iss: str | None = None
    access_token: str | None = field(default=None, repr=False)
    patient: str | None = None
    fhir_user: str | None = None  # "Practitioner/123" (relative to iss when it was on iss)
    user_display: str | None = None
    app_context: dict[str, Any] | None = None
    pending: dict[str, PendingLogin] = field(default_factory=dict)  # by OAuth state
    flash: list[str] = field(default_factory=list)
    submissions: dict[str, str] = field(default_factory=dict)  # idempotency key -> QR ref

    @property
    def signed_in(self) -> bool:
        return self.demo or self.access_token is not None


class SessionStore:
    """Sessions by id, in memory, with idle and absolute expiry."""

    def __init__(self, secret: str | None, *, idle_seconds: int, max_seconds: int) -> None:
        self._serializer = URLSafeTimedSerializer(
            secret or secrets.token_urlsafe(32), salt="cart-app-session"
        )
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def new(self, *, demo: bool = False) -> Session:
        now = time.time()
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            created=now,
            last_seen=now,
            expires_at=now + self.max_seconds,
            demo=demo,
        )
        with self._lock:
            self._purge(now)
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
                del self._sessions[oldest.id]
            self._sessions[session.id] = session
        return session

    def get(self, request: Request) -> Session | None:
        """The request's live session, or None (no cookie, bad signature, expired)."""
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            sid = self._serializer.loads(raw, max_age=self.max_seconds)
        except BadSignature:
            return None
        now = time.time()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None
            if now > session.expires_at or now - session.last_seen > self.idle_seconds:
                del self._sessions[sid]
                return None
            session.last_seen = now
            return session

    def drop(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)

    def _purge(self, now: float) -> None:
        dead = [
            sid
            for sid, s in self._sessions.items()
            if now > s.expires_at or now - s.last_seen > self.idle_seconds
        ]
        for sid in dead:
            del self._sessions[sid]

    # -- cookie ----------------------------------------------------------------------------
    def set_cookie(self, response: Response, session: Session, *, secure: bool) -> None:
        response.set_cookie(
            COOKIE,
            self._serializer.dumps(session.id),
            max_age=max(1, int(session.expires_at - time.time())),
            path=COOKIE_PATH,
            httponly=True,
            secure=secure,
            # Lax, not Strict: the SMART callback is a top-level redirect from the EHR's
            # authorization server and must carry the cookie to find its state.
            samesite="lax",
        )

    @staticmethod
    def clear_cookie(response: Response) -> None:
        response.delete_cookie(COOKIE, path=COOKIE_PATH)


def check_csrf(session: Session | None, submitted: Any) -> bool:
    """The form's token equals the session's (constant-time)."""
    if session is None or not isinstance(submitted, str) or not submitted:
        return False
    return secrets.compare_digest(session.csrf.encode(), submitted.encode())
