"""The one exception family of fedlora (STYLE.md §5).

Messages name the field, the expected and the actual value. They never contain keys, key shares,
plaintexts or gradients: an error message ends up in logs that other people read.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "ConfigError",
    "CryptoError",
    "FedLoraError",
    "NotFoundError",
    "ProtocolError",
    "RateLimitError",
    "RemoteError",
    "TransportError",
    "UnavailableError",
    "VerificationError",
]


class FedLoraError(Exception):
    """Root of every error fedlora raises on purpose.

    ``party``: the federation party the error blames, where one is to blame (a share holder whose
    partial decryption failed its proof); a failed round names it in the audit log.
    """

    def __init__(self, *args: object, party: str | None = None) -> None:
        super().__init__(*args)
        self.party = party


class ConfigError(FedLoraError):
    """A configuration file or option is malformed; the message names the dotted key path."""


class ProtocolError(FedLoraError):
    """A message arrived that the protocol does not allow at this point."""


class VerificationError(FedLoraError):
    """A signature, proof, digest or audit entry did not verify."""


class CryptoError(FedLoraError):
    """A cryptographic operation was given an invalid key, ciphertext, share or parameter."""


class AuthenticationError(FedLoraError):
    """The caller presented no usable identity (gRPC UNAUTHENTICATED)."""


class AuthorizationError(FedLoraError):
    """The caller's identity is not enrolled, or is revoked (gRPC PERMISSION_DENIED)."""


class NotFoundError(FedLoraError):
    """The thing asked for does not exist (gRPC NOT_FOUND)."""


class OutOfRangeError(FedLoraError):
    """A position or size past what exists, e.g. an audit entry beyond the log (OUT_OF_RANGE)."""


class RateLimitError(FedLoraError):
    """Too many rejected submissions from one identity; refused before any work (RESOURCE_EXHAUSTED)."""


class RemoteError(FedLoraError):
    """The other side examined a request and refused it; ``reason`` is the kind of refusal.

    Kept apart from the local error classes: a client that *refuses* a coordinator's task raises
    :class:`VerificationError`; a coordinator that refuses the client's upload reaches the client
    as ``RemoteError`` with ``reason`` :class:`VerificationError`.
    """

    def __init__(self, message: str, reason: type[FedLoraError] = FedLoraError) -> None:
        super().__init__(message)
        self.reason = reason


class UnavailableError(FedLoraError):
    """Not yet: the service is up but cannot answer this call yet (its key is being generated)."""


class TransportError(FedLoraError):
    """The other side could not be reached (or kept answering "busy") after every retry."""
