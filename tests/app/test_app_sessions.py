"""Sessions: a signed id in the cookie, data on the server, idle and absolute expiry."""

from __future__ import annotations

from service.app import sessions
from service.app.sessions import COOKIE, SessionStore, check_csrf
from tests.app.helpers import demo_client, open_form


class _Req:
    def __init__(self, cookie: str | None) -> None:
        self.cookies = {COOKIE: cookie} if cookie else {}


def _cookie(store: SessionStore, session) -> str:
    from starlette.responses import Response

    response = Response()
    store.set_cookie(response, session, secure=True)
    header = response.headers["set-cookie"]
    assert "Secure" in header and "HttpOnly" in header and "SameSite=lax" in header
    return header.split(";")[0].split("=", 1)[1]


def test_idle_sessions_expire(monkeypatch) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr(sessions.time, "time", lambda: now[0])
    store = SessionStore("secret", idle_seconds=60, max_seconds=3600)
    session = store.new()
    cookie = _cookie(store, session)
    now[0] += 59
    assert store.get(_Req(cookie)) is session
    now[0] += 61
    assert store.get(_Req(cookie)) is None


def test_sessions_end_at_their_absolute_expiry_even_when_active(monkeypatch) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr(sessions.time, "time", lambda: now[0])
    store = SessionStore("secret", idle_seconds=600, max_seconds=3600)
    session = store.new()
    cookie = _cookie(store, session)
    for _ in range(7):
        now[0] += 500
        store.get(_Req(cookie))
    now[0] += 500  # 4,000 s after the start, active all along
    assert store.get(_Req(cookie)) is None


def test_a_forged_or_foreign_cookie_is_no_session() -> None:
    store = SessionStore("secret", idle_seconds=60, max_seconds=3600)
    session = store.new()
    other = SessionStore("another secret", idle_seconds=60, max_seconds=3600)
    assert store.get(_Req(session.id)) is None  # the bare id, unsigned
    assert store.get(_Req(_cookie(other, other.new()))) is None
    assert store.get(_Req(None)) is None


def test_csrf_check_is_exact() -> None:
    store = SessionStore(None, idle_seconds=60, max_seconds=60)
    session = store.new()
    assert check_csrf(session, session.csrf)
    assert not check_csrf(session, session.csrf[:-1])
    assert not check_csrf(session, None)
    assert not check_csrf(None, session.csrf)


def test_an_expired_session_cannot_post_an_old_form() -> None:
    with demo_client(app_session_idle_minutes=0) as client:
        _, hidden = open_form(client, "demo-potential")
        answer = client.post("/app/patients/demo-potential/attest", data={**hidden, "I5": "true"})
        assert answer.status_code == 403
        assert client.app.state.web_app.demo.written("QuestionnaireResponse") == []
