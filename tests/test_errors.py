"""One exception tree rooted in the service (issue 23, 5): input, protocol, upstream server,
configuration; a catch-all for unreadable data no longer swallows protocol bugs."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

from service import errors
from service.clinical.model import Outcome
from service.clinical.rules import RULES, Rule, load_all
from service.protocol import ProtocolError
from tests.builders import patient, result, run

ROOT = Path(__file__).resolve().parent.parent
BUILTIN_EXCEPTIONS = {
    name
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception)  # not control flow (KeyboardInterrupt)
}


def test_the_families_and_their_second_bases() -> None:
    from service.api_keys import UnsafeConfiguration
    from service.fhir import errors as fhir
    from service.inputs import ConfigurationError
    from service.record import InputError
    from service.strict_json import DuplicateKeyError
    from service.terminology.conceptmaps import SiteMappingError
    from service.units import UnitError

    assert InputError is errors.InputError and issubclass(InputError, ValueError)
    assert ProtocolError is errors.ProtocolError and issubclass(ProtocolError, ValueError)
    assert ConfigurationError is errors.ConfigurationError
    assert issubclass(ConfigurationError, RuntimeError)
    assert issubclass(UnsafeConfiguration, errors.ConfigurationError)
    assert issubclass(SiteMappingError, errors.ConfigurationError)
    assert issubclass(fhir.FhirError, errors.ServiceError)
    assert issubclass(fhir.UpstreamError, errors.UpstreamError)
    assert issubclass(fhir.DeadlineExceeded, errors.UpstreamError)
    assert issubclass(fhir.FhirConfigError, errors.ConfigurationError)
    assert issubclass(DuplicateKeyError, errors.InputError)
    assert issubclass(UnitError, errors.ServiceError) and issubclass(UnitError, ValueError)
    assert not issubclass(UnitError, errors.ProtocolError)


def _unrooted_exception_classes() -> list[str]:
    """Public exception classes in service/ whose every base is a builtin exception."""
    found = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]
            if bases and all(b in BUILTIN_EXCEPTIONS for b in bases):
                found.append(f"{path.relative_to(ROOT)}:{node.name}")
    return found


def test_every_public_exception_class_is_rooted_in_the_service() -> None:
    assert _unrooted_exception_classes() == ["service/errors.py:ServiceError"]


def _evaluate_with_minimum_age(monkeypatch: pytest.MonkeyPatch, raising: Exception):
    load_all()
    original = RULES["minimum_age"]

    def broken(criterion, ctx):
        raise raising

    monkeypatch.setitem(RULES, "minimum_age", Rule(broken, original.reads, original.params))
    return run(patient("1990-01-01"))


def test_a_protocol_error_inside_a_rule_is_not_passed_off_as_unreadable_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: ProtocolError is a ValueError, so the engine's last line of defence made I1
    "undetermined: the input holds data this rule cannot read"."""
    with pytest.raises(ProtocolError, match="no ValueSet"):
        _evaluate_with_minimum_age(monkeypatch, ProtocolError("no ValueSet 'x'"))


def test_a_configuration_error_inside_a_rule_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(errors.ConfigurationError):
        _evaluate_with_minimum_age(monkeypatch, errors.ConfigurationError("bad site mapping"))


def test_unreadable_data_inside_a_rule_still_makes_the_criterion_undetermined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    evaluation = _evaluate_with_minimum_age(monkeypatch, ValueError("a date it cannot read"))
    r = result(evaluation, "I1")
    assert r.outcome is Outcome.UNDETERMINED
    assert "cannot read" in r.reason
