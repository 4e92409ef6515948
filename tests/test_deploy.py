"""The deployment files are run, not only linted: each is parsed by the tool that reads it (or
the closest thing available here: no Docker daemon, no cluster), and the service is STARTED with
exactly the environment each one gives it (its FHIR host moved to a loopback stub), then must
answer ``/healthz`` (readiness) with 200.

- Compose: PyYAML with a loader that rejects duplicate keys (Compose does), plus compose-go, the
  Compose loader itself (``make deploy-tools`` builds it; skipped with a reason when absent).
- Kubernetes: ``kustomize build`` (``make deploy-tools``, or ``kubectl kustomize``); the
  Deployment's environment is assembled from the rendered ConfigMap and env entries, with the
  Secret's values replaced by values generated here.
- Dockerfile: parsed; its CMD is the command the service is started with, with the host moved
  to 127.0.0.1 and a free port.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from service.demo import demo_files

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
BIN = Path(sys.executable).parent  # the virtualenv's bin: what the image installs
TOOLS_HINT = "run `make deploy-tools` (needs Go) to build it"


# -- YAML as strict as the real loaders ----------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (Compose and kubectl do)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def strict_yaml(text: str) -> list[Any]:
    return [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc is not None]


def test_strict_loader_rejects_duplicate_keys():
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'build'"):
        strict_yaml("services:\n  a:\n    build: x\n    build: y\n")


# -- Dockerfile ----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buffer = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        word, _, rest = buffer.partition(" ")
        out.append((word.upper(), rest.strip()))
        buffer = ""
    return out


def runtime_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1] :]


def image_command() -> list[str]:
    """The runtime stage's CMD (exec form), as the container runs it."""
    (cmd,) = [json.loads(args) for word, args in runtime_stage() if word == "CMD"]
    assert isinstance(cmd, list), "CMD must use the exec (JSON) form"
    return cmd


def test_dockerfile_copies_what_exists_and_runs_a_command_the_venv_has():
    instructions = dockerfile_instructions()
    for word, args in instructions:
        if word == "COPY" and "--from" not in args:
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    cmd = image_command()
    assert cmd[:2] == ["sh", "-c"]
    inner = shlex.split(cmd[2])
    assert inner[0] == "exec"
    program, app_ref = inner[1], inner[2]
    assert (BIN / program).is_file(), f"{program} is not installed by the project"
    assert app_ref == "service.api:app"  # started for real by the tests below
    stage = dict(runtime_stage())
    assert stage["EXPOSE"] == "8080" and "--port 8080" in cmd[2]
    assert "127.0.0.1:8080/livez" in stage["HEALTHCHECK"]  # liveness, not FHIR readiness
    assert re.fullmatch(r"\d+:\d+", stage["USER"]), "numeric USER for runAsNonRoot"


def test_dockerignore_lets_in_everything_the_dockerfile_copies():
    allowed = {
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = {
        source.rstrip("/")
        for word, args in dockerfile_instructions()
        if word == "COPY" and "--from" not in args
        for source in args.split()[:-1]
    }
    assert copied <= allowed


# -- starting the service as a deploy file says ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start_like_the_image(env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """Run the Dockerfile's CMD with ``env`` only (no host settings), on loopback."""
    port = _free_port()
    command = image_command()[2]
    assert "--host 0.0.0.0" in command
    command = command.replace("--host 0.0.0.0", "--host 127.0.0.1")
    command = command.replace("--port 8080", f"--port {port}")
    base = {"PATH": f"{BIN}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    workdir = tmp_path / "app"  # WORKDIR /app: no source tree, no .env
    workdir.mkdir(exist_ok=True)
    log = (tmp_path / "service.log").open("wb")
    proc = subprocess.Popen(
        ["sh", "-c", command], env=base | env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen, url: str, tmp_path: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (tmp_path / "service.log").read_text(errors="replace")[-1500:]
            pytest.fail(f"the service exited with {proc.returncode}:\n{tail}")
        try:
            status, _ = _get(url + "/healthz")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail("no 200 from /healthz in time")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# -- Compose ---------------------------------------------------------------------------------


def compose_python() -> dict[str, Any]:
    (doc,) = strict_yaml(COMPOSE.read_text(encoding="utf-8"))
    return doc


def compose_go() -> dict[str, Any]:
    tool = BIN / "compose-config"
    if not tool.is_file():
        pytest.skip(f"compose-go checker not built: {TOOLS_HINT}")
    done = subprocess.run([str(tool), str(COMPOSE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_compose_file_parses_and_every_dependency_is_a_service():
    services = compose_python()["services"]
    assert {"eligibility", "hapi", "loader"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on missing service {dependency}"
    assert services["eligibility"]["depends_on"]["loader"] == {
        "condition": "service_completed_successfully"
    }
    loader = services["loader"]["command"]
    assert loader[:2] == ["eligibility", "load-demo"]
    assert "8080:8080" in services["eligibility"]["ports"][0]  # the image's port


def test_compose_file_loads_with_compose_go_as_python_reads_it():
    project = compose_go()
    python = compose_python()["services"]
    for name, service in project["services"].items():
        env = {k: str(v) for k, v in (python[name].get("environment") or {}).items()}
        assert service.get("environment", {}) == env


def test_compose_go_rejects_the_old_file(tmp_path):
    """The checker is not a rubber stamp: the file as it was (duplicate keys) is refused."""
    tool = BIN / "compose-config"
    if not tool.is_file():
        pytest.skip(f"compose-go checker not built: {TOOLS_HINT}")
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(
        "services:\n  eligibility:\n    image: x\n    depends_on:\n      hapi:\n"
        "        condition: service_started\n    build: .\n    build: .\n"
    )
    done = subprocess.run([str(tool), str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "already defined" in done.stderr


def test_compose_service_starts_with_its_environment(started):
    if "compose_error" in started:
        raise started["compose_error"]
    proc, url, log_dir = started["compose"]
    wait_healthy(proc, url, log_dir)
    status, body = _get(url + "/healthz")
    assert status == 200 and b'"ok"' in body


class _FhirStub(BaseHTTPRequestHandler):
    """Just enough FHIR server for the loader: metadata, and transactions answered 201."""

    received: list[dict] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") == "/fhir/metadata":
            self._send(200, {"resourceType": "CapabilityStatement"})
        else:
            self._send(404, {"resourceType": "OperationOutcome"})

    def do_POST(self) -> None:  # noqa: N802
        bundle = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append(bundle)
        entries = [{"response": {"status": "201 Created"}} for _ in bundle.get("entry", [])]
        self._send(
            200, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
        )


def test_compose_loader_command_loads_the_demo_patients(tmp_path):
    command = list(compose_python()["services"]["loader"]["command"])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FhirStub)
    _FhirStub.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base_at = command.index("--base") + 1
        assert command[base_at] == "http://hapi:8080/fhir"
        command[base_at] = f"http://127.0.0.1:{server.server_address[1]}/fhir"
        command[0] = str(BIN / command[0])
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert len(_FhirStub.received) == len(demo_files())  # one transaction per demo patient
    assert all(b["type"] == "transaction" for b in _FhirStub.received)


# -- Kubernetes ------------------------------------------------------------------------------


def kustomize_command() -> list[str]:
    for candidate in (BIN / "kustomize", shutil.which("kustomize")):
        if candidate and Path(candidate).is_file():
            return [str(candidate), "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        probe = subprocess.run([kubectl, "kustomize", "--help"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [kubectl, "kustomize"]
    pytest.skip(f"no kustomize: {TOOLS_HINT}, or install kubectl")


def rendered() -> list[dict[str, Any]]:
    done = subprocess.run(
        [*kustomize_command(), str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return strict_yaml(done.stdout)


def test_kustomization_lists_files_that_exist_and_no_secret():
    (kustomization,) = strict_yaml((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        (doc,) = strict_yaml((K8S / resource).read_text())
        assert doc["kind"] != "Secret", f"{resource}: a Secret must be referenced, not applied"


def test_kustomize_renders_without_a_secret():
    kinds = sorted(doc["kind"] for doc in rendered())
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]


def _k8s_environment(docs: list[dict[str, Any]], tmp_path: Path) -> tuple[dict[str, str], dict]:
    """The container's environment; Secret values and mounted files generated for the test."""
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config_map = by_kind[("ConfigMap", source["configMapRef"]["name"])]
        env.update(config_map["data"])
    generated: dict[str, str] = {
        "ELIGIBILITY_API_KEYS": json.dumps([secrets.token_hex(32)]),
        "ELIGIBILITY_FHIR_TOKEN": secrets.token_hex(16),
        "smart-private-key.pem": ec.generate_private_key(ec.SECP384R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode(),
    }
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = generated[ref["key"]]
    # Secret volumes: their files under a temporary root, and paths in the env moved there.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if not secret:
            continue
        local = tmp_path / "mounts" / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True)
        for item in secret.get("items", []):
            (local / item["path"]).write_text(generated[item["key"]])
        for name, value in env.items():
            if value.startswith(mount["mountPath"] + "/"):
                env[name] = str(local) + value[len(mount["mountPath"]) :]
    return env, container


def test_deployment_starts_with_its_configmap_and_secret_references(started):
    if "k8s" not in started:
        pytest.skip(started["k8s_skipped"])
    proc, url, log_dir = started["k8s"]
    env, container = started["k8s_env"]
    assert env["ELIGIBILITY_FHIR_BASE_URL"] and env["ELIGIBILITY_FHIR_AUTH"] == "smart"
    assert Path(env["ELIGIBILITY_SMART_PRIVATE_KEY_PATH"]).is_file()
    # The probes and port are the ones the image serves.
    assert container["ports"][0]["containerPort"] == 8080
    # Readiness follows the FHIR server; liveness never does (no restart loop in an outage).
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    wait_healthy(proc, url, log_dir)
    # Caller authentication is on: no key, no patient data (refused before any FHIR call).
    status, _ = _get(url + "/Patient/p1/$eligibility")
    assert status == 401


# -- both services start at once (each takes seconds to import) -------------------------------


@pytest.fixture(scope="module")
def fhir_stub() -> Any:
    """A loopback FHIR server standing in for the deploy file's FHIR host (readiness probe)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FhirStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _fhir_host_on_loopback(env: dict[str, str], stub: str) -> dict[str, str]:
    """The deploy file's environment with only the FHIR server's host:port moved to ``stub``:
    readiness (``/healthz``) asks that server for its metadata, as it would in the cluster."""
    base = env.get("ELIGIBILITY_FHIR_BASE_URL")
    if not base:
        return env
    parts = urllib.parse.urlsplit(base)
    assert parts.path.rstrip("/") == "/fhir", "the stub serves FHIR under /fhir"
    moved = urllib.parse.urlunsplit(("http", stub, parts.path, "", ""))
    return env | {"ELIGIBILITY_FHIR_BASE_URL": moved}


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory, fhir_stub: str):
    out: dict[str, Any] = {}
    compose_dir = tmp_path_factory.mktemp("compose")
    try:
        services = compose_python()["services"]
    except yaml.YAMLError as exc:
        out["compose_error"] = exc  # reported by the compose test; the k8s one still runs
    else:
        env = {k: str(v) for k, v in services["eligibility"]["environment"].items()}
        env = _fhir_host_on_loopback(env, fhir_stub)
        out["compose"] = (*start_like_the_image(env, compose_dir), compose_dir)
    try:
        docs = rendered()
    except pytest.skip.Exception as exc:
        out["k8s_skipped"] = str(exc)
    else:
        k8s_dir = tmp_path_factory.mktemp("k8s")
        out["k8s_env"] = _k8s_environment(docs, k8s_dir)
        env = _fhir_host_on_loopback(out["k8s_env"][0], fhir_stub)
        out["k8s"] = (*start_like_the_image(env, k8s_dir), k8s_dir)
    yield out
    for key in ("compose", "k8s"):
        if key in out:
            stop(out[key][0])


def test_the_image_builder_can_compile_the_scanner():
    """The wheel carries the compiled duplicate-key scanner only if the builder has a compiler;
    the runtime stage needs none (it installs the built wheel)."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    builder, _, runtime = text.partition("AS runtime")
    assert "service/_keyscan.c" in (ROOT / "pyproject.toml").read_text()
    assert re.search(r"apt-get install[^\n]*\bgcc\b", builder)
    assert "gcc" not in runtime
