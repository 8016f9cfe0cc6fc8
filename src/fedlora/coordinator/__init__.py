"""fedlora.coordinator — the gRPC coordinator: rounds, homomorphic aggregation, persistence."""

from __future__ import annotations

from fedlora.coordinator._engine import Coordinator, Receipt
from fedlora.coordinator._rounds import ALLOWED, TRANSITIONS, Message, Stage, check_message
from fedlora.coordinator._server import (
    Running,
    build_engine,
    create_server,
    load_signing_key,
    serve,
)
from fedlora.coordinator._servicer import INSECURE_IDENTITY_HEADER, STATUS, status_for

__all__ = [
    "ALLOWED",
    "INSECURE_IDENTITY_HEADER",
    "STATUS",
    "TRANSITIONS",
    "Coordinator",
    "Message",
    "Receipt",
    "Running",
    "Stage",
    "build_engine",
    "check_message",
    "create_server",
    "load_signing_key",
    "serve",
    "status_for",
]
