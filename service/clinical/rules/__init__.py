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


RULES: dict[str, Rule] = {}


def rule(name: str, *, reads: tuple[str, ...] = ()) -> Callable[[Evaluator], Evaluator]:
    def register(fn: Evaluator) -> Evaluator:
        RULES[name] = Rule(fn, frozenset(reads))
        return fn

    return register


@cache
def load_all() -> dict[str, Rule]:
    """Import every module of this package once, so each rule registers itself."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return RULES
