"""The studies the app shows: the single-trial protocol first, then the loaded portfolio.

The review page without ``study=`` stays the single-trial page it always was (the protocol
``protocol_path`` names); the portfolio (``protocol_dirs``, else every folder under
``fhir_mappings/``) adds the other studies. A folder that reuses a name the first protocol
already has (a copy of it under test) is left out rather than stopping the app.
"""

from __future__ import annotations

import logging

from service.portfolio import Portfolio, load_portfolio
from service.protocol import Protocol, ProtocolError
from service.settings import Settings

log = logging.getLogger("service.app")


def app_portfolio(primary: Protocol, settings: Settings) -> Portfolio:
    """``primary`` and every loaded protocol that does not clash with it, in folder order."""
    chosen = [primary]
    try:
        loaded = load_portfolio(settings.protocol_dirs or None)
    except ProtocolError as exc:
        log.warning("portfolio not loaded: %s", exc)
        return Portfolio(chosen)
    for protocol in loaded:
        if protocol.id == primary.id:
            continue
        try:
            Portfolio([*chosen, protocol])
        except ProtocolError:
            log.warning("protocol %s left out: a name clashes with another", protocol.id)
            continue
        chosen.append(protocol)
    return Portfolio(chosen)


def resolve(portfolio: Portfolio, name: str | None, default: Protocol) -> Protocol:
    """The study ``name`` means (id, canonical or registry number); KeyError if none."""
    if name is None or not name.strip():
        return default
    return portfolio.get(name)
