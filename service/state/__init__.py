"""Shared state for the service: replay cache, rate-limit counters, CDS feedback.

One small interface (:class:`StateStore`) with three backends, chosen by :func:`open_store`:
memory (one process), SQLite (one host, several workers) and Redis (several replicas).
"""

from service.state.base import StateStore, StoreError, StoreFull
from service.state.factory import choose_backend, open_store

__all__ = ["StateStore", "StoreError", "StoreFull", "choose_backend", "open_store"]
