"""The web app served under ``/app/``: review page, investigator attestation, SMART launch."""

from fastapi import APIRouter

from service.app.login import router as login_router
from service.app.router import router as pages_router

router = APIRouter(prefix="/app", include_in_schema=False)
router.include_router(pages_router)
router.include_router(login_router)

__all__ = ["router"]
