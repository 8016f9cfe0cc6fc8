"""fedlora.coordinator — the coordinator: rounds, homomorphic aggregation, persistence.

The engine (:class:`Coordinator`), its clock (:class:`Driver`) and :func:`build_engine` need no
gRPC; the gRPC service (:func:`create_server`, :func:`serve`, :class:`Running`) is imported on
first use, so an in-process or Flower deployment never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedlora.coordinator._build import build_engine, load_signing_key
from fedlora.coordinator._driver import Driver
from fedlora.coordinator._engine import Coordinator
from fedlora.coordinator._startup import spec_source

if TYPE_CHECKING:
    from fedlora.coordinator._server import Running, create_server, serve

__all__ = [
    "Coordinator",
    "Driver",
    "Running",
    "build_engine",
    "create_server",
    "load_signing_key",
    "serve",
    "spec_source",
]

_SERVER = {"Running", "create_server", "serve"}


def __getattr__(name: str) -> Any:
    if name in _SERVER:
        from fedlora.coordinator import _server

        return getattr(_server, name)
    raise AttributeError(f"module 'fedlora.coordinator' has no attribute {name!r}")
