"""``eligibility subscribe``: our Subscriptions on a FHIR server, from the command line."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated

import typer

from service.fhir.pool import close_clients
from service.settings import get_settings
from service.subscriptions import subscribe as subs
from service.subscriptions.criteria import criteria_for
from service.subscriptions.server import FhirServer, ServerError

EXIT_BAD_INPUT, EXIT_UPSTREAM = 2, 3


def _fail(message: str, code: int) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def subscribe(
    fhir_base: Annotated[
        str | None, typer.Option(help="FHIR server base (default: ELIGIBILITY_FHIR_BASE_URL)")
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(help="our receiver, {public base}/subscription/notify (default: setting)"),
    ] = None,
    remove: Annotated[bool, typer.Option("--remove", help="delete ours instead")] = False,
    wait: Annotated[float | None, typer.Option(help="seconds to wait for 'active'")] = None,
) -> None:
    """Create (idempotently) the R4 rest-hook Subscriptions continuous screening needs, wait
    until the server activates them and report any in error; --remove deletes them."""
    from service.portfolio import load_portfolio
    from service.protocol import ProtocolError

    settings = get_settings()
    base = fhir_base or settings.fhir_base_url
    target = endpoint or settings.subscription_endpoint
    if not base:
        raise _fail("no FHIR base: give --fhir-base or set ELIGIBILITY_FHIR_BASE_URL", 2)
    if not target or not target.startswith(("http://", "https://")):
        raise _fail("no receiver: give --endpoint http(s)://... or set SUBSCRIPTION_ENDPOINT", 2)
    secret = settings.subscription_secret or None
    if not remove and secret is None:
        raise _fail("set ELIGIBILITY_SUBSCRIPTION_SECRET (the shared secret)", EXIT_BAD_INPUT)
    if os.environ.get("ELIGIBILITY_FHIR_BASE_URL") is None and fhir_base:
        settings = settings.model_copy(update={"fhir_base_url": fhir_base})
    try:
        protocols = load_portfolio(settings.protocol_dirs or None).protocols
    except (OSError, ProtocolError) as exc:
        raise _fail(f"cannot load the protocols: {exc}", 1) from None

    async def run() -> int:
        server = FhirServer.from_settings(settings, base)
        try:
            if remove:
                gone = await subs.remove(server, target)
                print(f"removed {len(gone)} subscription(s)")
                return 0
            assert secret is not None
            header = subs.secret_header(settings.subscription_header, secret.get_secret_value())
            done = await subs.ensure(server, criteria_for(protocols), target, header)
            print(", ".join(f"{k} {len(v)}" for k, v in done.items()))
            timeout = settings.subscription_activation_timeout if wait is None else wait
            states = await subs.wait_active(server, target, timeout)
        finally:
            await server.aclose()
            await close_clients()  # this run's own event loop: its pooled connections
        bad = 0
        for st in states:
            print(f"Subscription/{st.id}  {st.status:<9}  {st.criteria[:70]}")
            if st.status != "active":
                bad += 1
                if st.error:
                    print(f"  error: {st.error}", file=sys.stderr)
        if bad:
            print(f"error: {bad} subscription(s) not active", file=sys.stderr)
            return EXIT_UPSTREAM
        return 0

    try:
        code = asyncio.run(run())
    except (ServerError, ValueError) as exc:
        raise _fail(str(exc), EXIT_UPSTREAM) from None
    raise typer.Exit(code)
