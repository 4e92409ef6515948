"""Private modules stay private (issue 23, 5): no module or test reaches into another module's
underscore names (``from x import _y`` or ``x._y``). What is left is allowlisted with a reason,
to be made public or tested through the public function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "tests", "benchmarks", "fhir_mappings")


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def reaches(path: Path) -> list[str]:
    """``module:name`` for every other module's private name this file uses."""
    tree = ast.parse(path.read_text())
    modules: dict[str, str] = {}  # local name -> project module it is bound to
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                if _is_module(dotted):
                    modules[alias.asname or alias.name] = dotted
                elif _private(alias.name):
                    found.append(f"{node.module}:{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and _private(node.attr)
        ):
            found.append(f"{modules[node.value.id]}:{node.attr}")
    own = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return sorted({f for f in found if f.split(":")[0] != own})


def all_reaches() -> dict[str, list[str]]:
    out = {}
    for package in ("service", "tests", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if hits := reaches(path):
                out[str(path.relative_to(ROOT))] = hits
    return out


# file -> the private names it may still use, and why. Shrink this; never grow it.
_KEYSCAN = "the C extension service/_keyscan is the package's own; service.lean wraps it"
_APP = "service/app/ is being changed in parallel; login.py should get a shared helpers module"
ALLOWED: dict[str, tuple[str, ...]] = {
    # service: package-internal
    "service/lean.py": ("service:_keyscan",),  # _KEYSCAN
    "service/entry_cap.py": ("service:_keyscan",),  # _KEYSCAN
    "service/app/login.py": tuple(
        f"service.app.router:{n}"
        for n in (
            "_cookie_secure",
            "_error",
            "_read_form",
            "_redirect",
            "_secure",
            "_settings",
            "_standalone_iss",
            "_state",
        )
    ),  # _APP
    "service/fhir/demo_layer.py": ("service.fhir.demo_store:_load_demo_bundles",),  # same layer
    # tests of internals, each testing a helper that has no public path of its own yet
    "tests/test_entry_cap.py": ("service.lean:_keyscan",),  # _KEYSCAN
    "tests/test_keyscan.py": ("service.lean:_keyscan", "service.lean:_utf8"),  # the scanner
    "tests/test_lean_equivalence.py": ("service.lean:_keyscan",),  # builds with/without it
    "tests/app/test_app_smart_units.py": ("service.app.smart:_app_context",),  # _APP
    "tests/terminology/test_translate.py": ("service.terminology.runtime:_ACTIVE",),  # reset
    "tests/test_broader_codes.py": ("tests.builders:_id",),  # test builders' id counter
    "tests/test_output.py": ("service.output:_urn",),  # the urn:uuid pool (fork safety)
    "tests/test_output_kinds.py": ("service.app.router:_TEMPLATES",),  # _APP
    "tests/test_rule_attestations.py": ("service.clinical.engine:_run",),  # one criterion
    "tests/test_screening_ndjson.py": ("service.screening.ndjson:_ObservationSkipper",),
    "tests/test_units.py": tuple(
        f"service.units:{n}" for n in ("_LOADED", "_conversion", "_parse", "_registry", "_tables")
    ),  # the unit caches, reset and inspected
}


def test_no_module_reaches_into_another_modules_private_names() -> None:
    unexpected = {
        f: [h for h in hits if h not in ALLOWED.get(f, ())] for f, hits in all_reaches().items()
    }
    assert {f: h for f, h in unexpected.items() if h} == {}


def test_the_scanner_sees_both_forms(tmp_path: Path) -> None:
    probe = ROOT / "tests" / "_private_probe_tmp.py"
    probe.write_text(
        "from service.pipeline import _x\nfrom service import record\nrecord._iter_entries\n"
        "from service import errors\nerrors.ServiceError\n"
    )
    try:
        assert reaches(probe) == ["service.pipeline:_x", "service.record:_iter_entries"]
    finally:
        probe.unlink()
