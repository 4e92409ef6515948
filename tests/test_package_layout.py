"""The product package holds only what a deployment runs; the benchmarks import in no circle.

Issue 23 (4): ``benchmarks/`` sits beside ``service/`` and is not installed with it; its report
and screening modules once imported each other (lazily, to dodge the circle).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path, package: str) -> set[str]:
    """Every module of ``package`` that ``path`` imports, at any depth (lazy ones included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == package}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == package:
                found |= {f"{package}.{a.name}" for a in node.names}
            elif node.module.split(".")[0] == package:
                found.add(node.module)
    return found


def _module_graph(package: str) -> dict[str, set[str]]:
    folder = ROOT / package
    modules = {
        f"{package}.{p.stem}" if p.stem != "__init__" else package: p for p in folder.glob("*.py")
    }
    return {name: _imports(path, package) & set(modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], node, nxt] if nxt in stack else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*stack, node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_no_import_circle_among_benchmark_modules() -> None:
    graph = _module_graph("benchmarks")
    assert "benchmarks.report" in graph and "benchmarks.screening" in graph
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph) or [])}"


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_service_package_holds_no_benchmark_code() -> None:
    assert not (ROOT / "service" / "bench").exists()
    importers = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "service").rglob("*.py")
        if _imports(p, "benchmarks")
    )
    assert importers == ["service/cli.py"]  # the thin, lazy `eligibility bench` entry


def test_benchmarks_are_not_installed_with_the_service() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(pattern.startswith("bench") for pattern in include)
    assert (ROOT / "benchmarks" / "__init__.py").is_file()


def test_eligibility_bench_without_the_benchmarks_folder_fails_clearly(
    tmp_path: Path, monkeypatch
) -> None:
    """An installed service has no benchmarks/: the thin entry says so, exit 2, no traceback."""
    from typer.testing import CliRunner

    from service import cli

    monkeypatch.setattr(cli, "BENCHMARKS_CHECKOUT", tmp_path)
    done = CliRunner().invoke(cli.app, ["bench", "--smoke", "--out", str(tmp_path / "out")])
    assert done.exit_code == 2
    assert "benchmarks are not installed with the service" in done.output
    assert not (tmp_path / "out").exists()
