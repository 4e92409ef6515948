"""The manual's shell and HTTP examples, extracted from ``docs/`` and the front page
(``README.md``), and run against a real service.

Convention (``docs/development/docs.md``): every fenced ``bash`` and ``http`` block runs. An
HTML comment on the line before a block changes that: ``<!-- not-run: why -->`` (illustrative
only), ``<!-- needs: hapi -->`` (runs in the HAPI suite), ``<!-- expect: 401 -->`` (the HTTP
status the block must answer; 2xx otherwise).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.ops_support import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
RUN_LANGS = ("bash", "http")
DEMO_ORIGIN = "127.0.0.1:8000"  # the address the docs write; replaced by the test server's
HAPI_BASE = "http://127.0.0.1:8090/fhir"  # the docs' HAPI base; replaced by HAPI_BASE_URL
_FENCE = re.compile(r"^```([A-Za-z0-9_-]*)\s*$")
_MARK = re.compile(r"^<!--\s*(not-run|needs|expect)\s*(?::\s*(.*?))?\s*-->\s*$")


@dataclass(frozen=True)
class Example:
    page: str  # relative to docs/, or README.md (the front page)
    line: int  # of the opening fence
    lang: str
    code: str
    mode: str = "run"  # "run", "hapi", "not-run"
    expect: int | None = None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def extract(text: str, page: str) -> list[Example]:
    """Every fenced block of a runnable language in one page, with its markers."""
    lines = text.splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        lang, start = fence.group(1), i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        mode, expect = "run", None
        k = start - 1
        while k >= 0 and (mark := _MARK.match(lines[k])):
            kind, value = mark.group(1), mark.group(2) or ""
            if kind == "not-run":
                mode = "not-run"
            elif kind == "needs":
                if value.strip() != "hapi":
                    raise ValueError(f"{page}:{k + 1}: unknown need {value!r}")
                mode = "hapi"
            else:
                expect = int(value)
            k -= 1
        if lang in RUN_LANGS:
            code = "\n".join(lines[start + 1 : end])
            found.append(Example(page, start + 1, lang, code, mode, expect))
        i = end + 1
    return found


def all_examples() -> list[Example]:
    """The manual's examples, then the front page's: its commands must work when pasted too."""
    pages = [(path, str(path.relative_to(DOCS))) for path in sorted(DOCS.rglob("*.md"))]
    pages.append((README, "README.md"))
    return [example for path, page in pages for example in extract(path.read_text(), page)]


# -- running them --------------------------------------------------------------------------

PRELUDE = """
make() {
  case "$*" in
    serve-bg|stop) echo "(make $*: played by the test's server)";;
    *) echo "make $* is not run from the docs' examples" >&2; return 1;;
  esac
}
"""


def clean_env(**extra: str) -> dict[str, str]:
    """No ELIGIBILITY_* settings from the caller: the examples describe the demo service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELIGIBILITY_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def scratch_folder(folder: Path) -> Path:
    """A folder that looks like a checkout to the examples: fhir_mappings/ and
    .venv/bin/eligibility (this checkout's CLI, with this interpreter)."""
    (folder / "fhir_mappings").symlink_to(ROOT / "fhir_mappings")
    bin_dir = folder / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    cli = bin_dir / "eligibility"
    cli.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -c '
        '\'import sys; sys.argv[0] = "eligibility"; from service.cli import app; app()\' "$@"\n'
    )
    cli.chmod(0o755)
    return folder


def substitute(code: str, origin: str, hapi_base: str | None = None) -> str:
    code = code.replace(DEMO_ORIGIN, origin)
    return code.replace(HAPI_BASE, hapi_base) if hapi_base else code


def run_shell(code: str, folder: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = clean_env(PATH=f"{folder / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        ["bash", "-e", "-u", "-c", PRELUDE + code],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def parse_http(code: str) -> tuple[str, str, dict[str, str], bytes]:
    """``METHOD /path HTTP/1.1``, headers, a blank line, the body (as in RFC 9112)."""
    head, _, body = code.strip("\n").partition("\n\n")
    request_line, *header_lines = head.splitlines()
    method, path, _version = request_line.split()
    headers = dict(line.split(": ", 1) for line in header_lines)
    headers.pop("Host", None)
    return method, path, headers, body.encode()


def send_http(code: str, origin: str) -> httpx.Response:
    method, path, headers, body = parse_http(code)
    with httpx.Client(base_url=f"http://{origin}", timeout=60) as client:
        return client.request(method, path, headers=headers, content=body or None)


@contextmanager
def demo_service(folder: Path) -> Iterator[str]:
    """``eligibility serve`` (this checkout) on a free port, demo mode; yields host:port."""
    port = free_port()
    log = open(folder / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(folder / ".venv" / "bin" / "eligibility"), "serve", "--port", str(port)],
        cwd=folder,
        env=clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    origin = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://{origin}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the demo service did not start: {proc.returncode}")
            time.sleep(0.2)
        yield origin
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
