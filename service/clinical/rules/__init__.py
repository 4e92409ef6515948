"""Generic criterion evaluators. A protocol criterion names one by its ``rule`` key.

Each evaluator is a pure function ``(criterion, context) -> CriterionResult``; the
protocol file supplies every threshold, window and value set it uses.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import cache

from service.clinical.model import CriterionResult
from service.clinical.rules.params import NoParams, RuleParams
from service.protocol import CriterionDef, Protocol
from service.record import PatientRecord


@dataclass
class Context:
    record: PatientRecord
    protocol: Protocol
    as_of: date
    results: dict[str, CriterionResult] = field(default_factory=dict)  # evaluated so far


Evaluator = Callable[[CriterionDef, Context], CriterionResult]


@dataclass(frozen=True)
class Rule:
    evaluate: Evaluator
    reads: frozenset[str]  # resource types whose truncated search makes the result unsafe
    params: type[RuleParams] = NoParams  # the criterion's parameters, validated at load


RULES: dict[str, Rule] = {}


def rule(
    name: str, *, reads: tuple[str, ...] = (), params: type[RuleParams] = NoParams
) -> Callable[[Evaluator], Evaluator]:
    """Register an evaluator under ``name``, with the typed model of its parameters."""

    def register(fn: Evaluator) -> Evaluator:
        RULES[name] = Rule(fn, frozenset(reads), params)
        return fn

    return register


@cache
def load_all() -> dict[str, Rule]:
    """Import every module of this package once, so each rule registers itself."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return RULES
