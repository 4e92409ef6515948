"""Which studies a screening runs for: the ``study`` names (id, canonical or registry number,
service.portfolio) or, none named, every loaded protocol, as ``evaluate --study`` chooses."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fhir_mappings import DEFAULT_PROTOCOL
from service.portfolio import load_portfolio
from service.protocol import Protocol
from service.record import InputError
from service.settings import Settings


def choose_studies(settings: Settings, names: Iterable[str] | None) -> list[Protocol]:
    """ELIGIBILITY_PROTOCOL_DIRS, or every folder under fhir_mappings/, or an explicitly set
    ELIGIBILITY_PROTOCOL_PATH alone; then the named ones in the order asked, each once.

    Raises ProtocolError when a protocol does not load, InputError for an unknown name."""
    paths = list(settings.protocol_dirs) or None
    if paths is None and Path(settings.protocol_path) != DEFAULT_PROTOCOL:
        paths = [settings.protocol_path]
    portfolio = load_portfolio(paths)
    try:
        return portfolio.select(list(names or []))
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None


def protocol_file(protocol: Protocol, settings: Settings) -> Path:
    """The file a worker process loads ``protocol`` from again."""
    configured = Path(settings.protocol_path)
    if configured.parent.resolve() == protocol.directory.resolve():
        return configured
    return protocol.directory / "protocol.toml"
