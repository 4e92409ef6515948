"""The latest answer per patient and study, wherever it was computed.

Screening runs, ``$eligibility``, CDS Hooks and Subscription notifications all end in one
:class:`StudyResult` per patient and study; the coordinator's worklist lists them and a
change of status is detected here, once (see :meth:`ResultStore.record`).
"""

from service.results.model import StudyResult, summarise
from service.results.store import (
    MemoryResultStore,
    ResultStore,
    app_result_store,
    open_result_store,
)

__all__ = [
    "MemoryResultStore",
    "ResultStore",
    "StudyResult",
    "app_result_store",
    "open_result_store",
    "summarise",
]
