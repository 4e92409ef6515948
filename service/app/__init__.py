"""The web app served under ``/app/``: review page, investigator attestation, SMART launch."""

from service.app.router import router

__all__ = ["router"]
