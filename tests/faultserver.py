"""A real FHIR server on 127.0.0.1 that fails on demand, for tests of the client's failure paths.

It answers from the service's demo store (the same search code as the built-in demo mode:
reads, GET and POST searches, ``link[next]`` paging) over real sockets, with HTTP/1.1
keep-alive and one thread per connection, so timing, paging and connection behaviour are
those of a network server rather than of a mock transport. Faults are chosen per request:

====================  ===================================================================
``ok``                the demo store's answer
``500``               HTTP 500 with an error OperationOutcome
``outcome-200``       HTTP 200 whose body is an error OperationOutcome
``wrong-patient``     a Patient read answers another Patient (other requests: ``ok``)
``hang``              reads the request, never answers (until ``release()``/``stop()``)
``reset``             headers and half the body, then a TCP reset (RST)
``truncated-chunked`` chunked body cut after the first chunk, connection closed cleanly
``close``             closes the connection without any response
``drip``              the right answer, one small piece every ``drip_seconds``
``429``               HTTP 429 with ``Retry-After: <retry_after>`` (seconds)
``503``               HTTP 503 with an error OperationOutcome
====================  ===================================================================

Use::

    with FaultServer() as server:
        server.set_faults("500", "ok")          # first request 500, then ok for the rest
        server.set_faults("500", "hang", cycle=True)  # alternate for ever
        ...server.base_url, server.requests ...
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson

from service.demo import load_demo_bundles
from service.fhir.demo_store import DemoStore

FAULTS = frozenset(
    {
        "ok",
        "500",
        "outcome-200",
        "wrong-patient",
        "hang",
        "reset",
        "truncated-chunked",
        "close",
        "drip",
        "429",
        "503",
    }
)
_ERROR_OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "exception", "diagnostics": "simulated failure"}],
}


class FaultServer:
    """The demo store over loopback HTTP, with a programmable fault per request."""

    def __init__(
        self,
        *,
        bundles: dict[str, dict] | None = None,
        page_size: int = 20,
        hang_seconds: float = 30.0,
        drip_seconds: float = 0.05,
        retry_after: int = 1,
    ) -> None:
        self.hang_seconds = hang_seconds
        self.drip_seconds = drip_seconds
        self.retry_after = retry_after
        self.requests: list[tuple[str, str, str]] = []  # (method, path, fault), in order
        self._lock = threading.Lock()
        self._faults: Iterator[str] = iter(())
        self._default = "ok"
        self._release = threading.Event()
        self._stopped = threading.Event()
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self.store = DemoStore(
            load_demo_bundles() if bundles is None else bundles,
            base_url=self.base_url,
            default_page_size=page_size,
            max_page_size=page_size,
        )
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------
    def start(self) -> FaultServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(self, *faults: str, cycle: bool = False, then: str = "ok") -> None:
        """Faults for the next requests in order (``cycle``: for ever), then ``then``."""
        unknown = set(faults) - FAULTS | ({then} - FAULTS)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        with self._lock:
            self._faults = itertools.cycle(faults) if cycle and faults else iter(faults)
            self._default = then
            if "hang" not in faults and then != "hang":
                self._release.set()  # healthy again: let hanging handlers go
            else:
                self._release.clear()

    def release(self) -> None:
        """End every hanging request now (their connections are closed unanswered)."""
        self._release.set()

    def count(self, path_part: str = "") -> int:
        with self._lock:
            return sum(1 for _, path, _ in self.requests if path_part in path)

    # -- per request ---------------------------------------------------------------------
    def _next_fault(self, method: str, path: str) -> str:
        with self._lock:
            fault = next(self._faults, self._default)
            self.requests.append((method, path, fault))
            return fault

    def _answer(self, method: str, url: str, body: bytes) -> httpx.Response:
        return self.store.handle(httpx.Request(method, url, content=body))


class _QuietServer(ThreadingHTTPServer):
    request_queue_size = 256  # the default 5 drops bursts of connects (1 s SYN retries)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-answer is part of the tests, not an error


def _handler_for(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real FHIR server

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass  # quiet test output

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            fault = server._next_fault(method, self.path)
            actions: dict[str, Callable[[], None]] = {
                "500": lambda: self._send(500, orjson.dumps(_ERROR_OUTCOME)),
                "outcome-200": lambda: self._send(200, orjson.dumps(_ERROR_OUTCOME)),
                "503": lambda: self._send(503, orjson.dumps(_ERROR_OUTCOME)),
                "429": lambda: self._send(
                    429,
                    orjson.dumps(_ERROR_OUTCOME),
                    {"Retry-After": str(server.retry_after)},
                ),
                "hang": self._hang,
                "close": self._close,
            }
            if fault in actions:
                actions[fault]()
                return
            answer = server._answer(method, f"http://127.0.0.1:{server.port}{self.path}", body)
            content = answer.content
            if fault == "wrong-patient":
                content = self._other_patient(content)
            if fault == "reset":
                self._reset(answer.status_code, content)
            elif fault == "truncated-chunked":
                self._truncated_chunked(answer.status_code, content)
            elif fault == "drip":
                self._drip(answer.status_code, content)
            else:
                self._send(answer.status_code, content)

        # -- ways to answer ----------------------------------------------------------------
        def _head(self, status: int, extra: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()

        def _send(self, status: int, content: bytes, extra: dict[str, str] | None = None) -> None:
            self._head(status, {"Content-Length": str(len(content)), **(extra or {})})
            self.wfile.write(content)

        def _hang(self) -> None:
            server._release.wait(server.hang_seconds)
            self._close()

        def _close(self) -> None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _reset(self, status: int, content: bytes) -> None:
            self._head(status, {"Content-Length": str(len(content))})
            self.wfile.write(content[: len(content) // 2])
            self.wfile.flush()
            time.sleep(0.05)  # let the client start reading the body
            # SO_LINGER on with a zero timeout: close() sends RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def _truncated_chunked(self, status: int, content: bytes) -> None:
            self._head(status, {"Transfer-Encoding": "chunked"})
            half = content[: max(1, len(content) // 2)]
            self.wfile.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
            self.wfile.flush()
            self._close()  # no terminating zero-size chunk

        def _drip(self, status: int, content: bytes) -> None:
            self._head(status, {"Content-Length": str(len(content))})
            step = max(1, len(content) // 20)
            for i in range(0, len(content), step):
                if server._stopped.is_set():
                    break
                self.wfile.write(content[i : i + step])
                self.wfile.flush()
                time.sleep(server.drip_seconds)

        @staticmethod
        def _other_patient(content: bytes) -> bytes:
            body = orjson.loads(content)
            if isinstance(body, dict) and body.get("resourceType") == "Patient":
                body["id"] = f"other-{body.get('id')}"
            return orjson.dumps(body)

    return Handler
