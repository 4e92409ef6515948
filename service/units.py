"""UCUM unit conversion for lab values (pint + the ucumvert UCUM parser).

Why this module is strict: a wrong unit reading turns a lab value into a wrong eligibility
answer, so anything we cannot read with certainty raises ``UnitError`` and the caller
reports the criterion as undetermined. Non-UCUM spellings, lab conventions and display
labels live in ``fhir_mappings/unit-aliases.toml`` (data), not here.

Conversion is on the hot path, so the UCUM registry is loaded once per process and every
(source unit, target unit, molar mass) factor is computed once and cached.
"""

from __future__ import annotations

import math
import re
import threading
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any

from fhir_mappings import UNIT_ALIASES
from service.errors import ServiceError

UCUM_SYSTEM = "http://unitsofmeasure.org"

# Bounded so a server sending endless distinct unit strings cannot grow memory without limit;
# real data uses a few dozen units.
_CACHE_SIZE = 4096
_LOCK = threading.RLock()  # registry loading and slow-path parsing happen once, in one thread


class UnitError(ServiceError, ValueError):
    """A unit (or value) cannot be read or converted with certainty; never guessed."""


# -- data file ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _UnitTables:
    aliases: dict[str, str]
    equivalences: tuple[tuple[str, str], ...]  # (a, b): 1 a == 1 b by lab convention
    display: dict[str, str]


@cache
def _tables() -> _UnitTables:
    with UNIT_ALIASES.open("rb") as fh:
        data = tomllib.load(fh)
    return _UnitTables(
        aliases=dict(data.get("aliases", {})),
        equivalences=tuple(data.get("unit_equivalences", {}).items()),
        display=dict(data.get("display", {})),
    )


@lru_cache(maxsize=4096)  # unit strings repeat; cleared when the site's mappings change
def _alias(unit: str) -> str:
    """The UCUM code for ``unit``: alias table (exact, then trimmed), else ``unit`` as given."""
    aliases = _tables().aliases
    found = aliases.get(unit)
    if found is None:
        found = aliases.get(unit.strip())
        if found is None and _SITE_UNITS:
            found = _SITE_UNITS.get(unit) or _SITE_UNITS.get(unit.strip())
    return unit if found is None else found


# -- site unit mappings (service.terminology) ---------------------------------------------
# Unit strings a site maps to UCUM in its ConceptMaps (exact mappings only), set once at
# start-up. Consulted only after the built-in table misses; empty by default (no cost).
_SITE_UNITS: dict[str, str] = {}


def set_site_units(aliases: Mapping[str, str]) -> None:
    """Install a site's unit mappings (string -> UCUM); replaces any earlier ones."""
    with _LOCK:
        _SITE_UNITS.clear()
        _SITE_UNITS.update(aliases)
        _alias.cache_clear()
        _parse.cache_clear()
        _conversion.cache_clear()


def builtin_reading(unit: str) -> str | None:
    """How the service reads ``unit`` without site mappings (its UCUM code), or None."""
    aliases = _tables().aliases
    found = aliases.get(unit) or aliases.get(unit.strip())
    if found is not None:
        return found
    return None if isinstance(_parse(unit.strip()), str) else unit.strip()


def check_ucum(code: str) -> None:
    """Raise ``UnitError`` unless ``code`` is valid UCUM."""
    parsed = _parse(code)
    if isinstance(parsed, str):
        raise UnitError(parsed)


# -- registry and parsing ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Registry:
    ureg: Any  # ucumvert.PintUcumRegistry
    arbitrary: frozenset[str]  # pint names of UCUM arbitrary units ([IU], [arb'U], ...)


_LOADED: list[_Registry] = []  # filled once; a list so no `global` statement is needed


def _registry() -> _Registry:
    """The UCUM registry, loaded on first use (~0.6 s) and then shared by the process."""
    if not _LOADED:
        with _LOCK:
            if not _LOADED:
                _LOADED.append(_load_registry())
    return _LOADED[0]


def _load_registry() -> _Registry:
    from ucumvert import PintUcumRegistry  # heavy import; only when first needed
    from ucumvert.xml_util import get_units_with_full_definition

    ureg = PintUcumRegistry()
    arbitrary: set[str] = set()
    for unit in get_units_with_full_definition():
        if unit.is_arbitrary:
            try:
                quantity = ureg.from_ucum(unit.code_cs)
            except Exception:  # noqa: BLE001 - a UCUM atom ucumvert cannot map
                continue
            arbitrary.update(name for name, _ in quantity.unit_items())
    return _Registry(ureg, frozenset(arbitrary))


def warm_up() -> None:
    """Load the UCUM registry now (~0.6 s) so the first request does not pay for it."""
    _tables()
    _registry()
    _parse("mg/dL")


@dataclass(frozen=True, slots=True)
class _Parsed:
    quantity: Any  # pint Quantity for one of the unit (magnitude may carry a UCUM factor)
    arbitrary: tuple[tuple[str, int], ...]  # arbitrary-unit signature, see _arbitrary_signature


MAX_UNIT_LENGTH = 40
_UCUM_CHARS = re.compile(r"[\x21-\x7e]+")  # UCUM: printable ASCII without spaces


@lru_cache(maxsize=_CACHE_SIZE)
def _parse(ucum: str) -> _Parsed | str:
    """Parse a UCUM code; a ``str`` result is the reason it cannot be used (cached too)."""
    if not ucum:
        return "no unit"
    if len(ucum) > MAX_UNIT_LENGTH or not _UCUM_CHARS.fullmatch(ucum):
        # The parser's time grows faster than the input; a lab unit is never this long.
        return "unit is too long or has characters UCUM does not use"
    registry = _registry()
    with _LOCK:
        try:
            quantity = registry.ureg.from_ucum(ucum)
        except Exception:  # noqa: BLE001 - parser and pint raise many types for bad input
            return f"unit {ucum!r} is neither a known alias nor valid UCUM"
        if not hasattr(quantity, "dimensionality"):
            return f"unit {ucum!r} could not be read as UCUM"
        return _Parsed(quantity, _arbitrary_signature(quantity, registry))


def _arbitrary_signature(quantity: Any, registry: _Registry) -> tuple[tuple[str, int], ...]:
    """Which UCUM arbitrary units a unit contains, prefixes removed.

    Why: pint gives ``[IU]`` no dimension, so ``[IU]/L`` would silently convert to the count
    ``10*9/L``. UCUM says arbitrary units convert only to themselves; we enforce that.
    """
    counts: Counter[str] = Counter()
    for name, exponent in quantity.unit_items():
        base = _unprefixed(name, quantity._REGISTRY)
        if base in registry.arbitrary:
            counts[base] += int(exponent)
    return tuple(sorted((k, v) for k, v in counts.items() if v))


def _unprefixed(name: str, ureg: Any) -> str:
    try:
        candidates = ureg.parse_unit_name(name)
    except Exception:  # noqa: BLE001
        return name
    return candidates[0][1] if candidates else name


# -- conversion factors ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Factor:
    factor: float | None
    error: str | None


def _compatible(a: _Parsed, b: _Parsed) -> bool:
    return a.quantity.dimensionality == b.quantity.dimensionality and a.arbitrary == b.arbitrary


def _ratio(source: Any, target: Any) -> float:
    """How many ``target`` one ``source`` is; refuses offset/log units (not linear)."""
    zero = (source * 0).to(target.units).magnitude
    if zero != 0:
        raise UnitError("offset units (e.g. temperatures) are not supported")
    return float(source.to(target.units).magnitude / target.magnitude)


@lru_cache(maxsize=_CACHE_SIZE)
def _conversion(source: str, target: str, molar_mass: float | None) -> _Factor:
    """The multiplier from ``source`` to ``target`` (UCUM codes), or why there is none.

    Cached per (source, target, molar mass), failures included: the same lab sends the same
    unit again and again.
    """
    src = _parse(source)
    if isinstance(src, str):
        return _Factor(None, src)
    tgt = _parse(target)
    if isinstance(tgt, str):
        return _Factor(None, f"target {tgt}")
    try:
        with _LOCK:
            factor = _find_factor(src, tgt, molar_mass)
    except UnitError as exc:
        return _Factor(None, str(exc))
    except Exception as exc:  # noqa: BLE001 - pint errors (offset units, ...) -> UnitError
        return _Factor(None, f"cannot convert {source!r} to {target!r}: {type(exc).__name__}")
    if factor is None:
        hint = ""
        if molar_mass is None and _mass_substance_pair(src, tgt):
            hint = " without a molar mass"
        return _Factor(None, f"cannot convert {source!r} to {target!r}{hint}")
    return _Factor(factor, None)


def _find_factor(src: _Parsed, tgt: _Parsed, molar_mass: float | None) -> float | None:
    if _compatible(src, tgt):
        return _ratio(src.quantity, tgt.quantity)
    if molar_mass is not None:
        # Mass <-> substance concentration: divide by g/mol one way, multiply the other.
        molar = _parse("g/mol")
        assert isinstance(molar, _Parsed)
        per_mole = molar.quantity * molar_mass
        for candidate in (src.quantity / per_mole, src.quantity * per_mole):
            moved = _Parsed(candidate, src.arbitrary)
            if _compatible(moved, tgt):
                return _ratio(candidate, tgt.quantity)
    for left, right in _tables().equivalences:
        for a, b in ((left, right), (right, left)):
            pa, pb = _parse(a), _parse(b)
            if isinstance(pa, str) or isinstance(pb, str):
                raise UnitError(f"unit_equivalences row {a!r} = {b!r} is not valid UCUM")
            if _compatible(src, pa) and _compatible(pb, tgt):
                # 1 a == 1 b by convention: source -> a, read as b, b -> target.
                return _ratio(src.quantity, pa.quantity) * _ratio(pb.quantity, tgt.quantity)
    return None


def _mass_substance_pair(src: _Parsed, tgt: _Parsed) -> bool:
    dims = {str(src.quantity.dimensionality), str(tgt.quantity.dimensionality)}
    return any("[mass]" in d for d in dims) and any("[substance]" in d for d in dims)


# -- public API --------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def unit_of(quantity: Mapping[str, Any]) -> str | None:
    """The unit of a FHIR Quantity, alias-resolved to UCUM where the table knows it.

    ``code`` is used only when ``system`` is UCUM (a code in another system, e.g. SNOMED,
    is not a unit string); otherwise, or when that code is missing, the ``unit`` text.
    Returns the original string when no alias applies, ``None`` when there is no unit.
    """
    code = _text(quantity.get("code")) if quantity.get("system") == UCUM_SYSTEM else None
    raw = code or _text(quantity.get("unit"))
    return None if raw is None else _alias(raw)


def check_agreement(quantity: Mapping[str, Any]) -> None:
    """Raise ``UnitError`` when a UCUM ``code`` and a ``unit`` text name different units.

    The code is what we read, so a unit text that is itself a unit and says something else
    (code ``umol/L``, text ``mg/dL``) makes the value ambiguous. Free text that is not a
    unit ("milligram per deciliter") does not count against the code.
    """
    if quantity.get("system") != UCUM_SYSTEM:
        return
    code, text = _text(quantity.get("code")), _text(quantity.get("unit"))
    if not code or not text:
        return
    code_unit, text_unit = _alias(code), _alias(text)
    if code_unit == text_unit or isinstance(_parse(text_unit), str):
        return
    try:
        same = math.isclose(convert(1.0, text_unit, code_unit), 1.0, rel_tol=1e-9)
    except UnitError:
        same = False
    if not same:
        raise UnitError(f"unit code {code!r} and unit text {text!r} disagree")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise UnitError("value is missing or not a number")
    number = float(value)
    if not math.isfinite(number):
        raise UnitError("value is not a finite number")
    return number


def convert(value: float, unit: str | None, target: str, molar_mass: float | None = None) -> float:
    """``value`` in ``unit`` (raw string; aliases applied) expressed in UCUM ``target``.

    ``molar_mass`` (g/mol) is needed only between mass and substance concentrations.
    Raises ``UnitError`` for an unknown, missing or inconvertible unit. The result is
    rounded to 12 significant digits: that drops binary noise (0.55 -> 55, not
    55.00000000000001) so a value exactly at a threshold stays exactly at it.
    """
    number = _number(value)
    if unit is None or not unit.strip():
        raise UnitError("no unit")
    if molar_mass is not None:
        molar_mass = _number(molar_mass)
        if molar_mass <= 0:
            raise UnitError("molar mass must be positive")
    result = _conversion(_alias(unit).strip(), _alias(target).strip(), molar_mass)
    if result.factor is None:
        raise UnitError(result.error or "cannot convert")
    return float(f"{number * result.factor:.12g}")


def convert_quantity(
    quantity: Mapping[str, Any], target: str, molar_mass: float | None = None
) -> float:
    """A FHIR Quantity's ``value`` in ``target``; its unit is chosen by ``unit_of``."""
    value = _number(quantity.get("value"))
    return convert(value, unit_of(quantity), target, molar_mass)


def describe(unit: str) -> str:
    """A human-readable label for ``unit`` (e.g. ``10*9/L`` -> ``×10⁹/L``); else ``unit``."""
    display = _tables().display
    if unit in display:
        return display[unit]
    return display.get(_alias(unit), unit)
