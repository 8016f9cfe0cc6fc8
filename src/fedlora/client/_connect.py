"""The networked client's default transport: the one place a role reaches for an adapter.

:class:`fedlora.client.Client` is given its transport (in-process, Flower's) or, given none,
gets gRPC from here; importing this module loads nothing, calling :func:`connect` loads grpc.
"""

from __future__ import annotations

from collections.abc import Callable

from fedlora.client._transport import Transport
from fedlora.config import ClientConfig


def connect(config: ClientConfig, on_retry: Callable[[str], None]) -> Transport:
    """gRPC to ``coordinator.address`` with the client's credentials, retrying as configured."""
    from fedlora.client._grpc import GrpcTransport

    return GrpcTransport(config, on_retry=on_retry)
