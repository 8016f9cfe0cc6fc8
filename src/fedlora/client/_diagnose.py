"""Why a coordinator cannot be reached: a TLS handshake of our own, turned into one sentence.

gRPC reports every failed connection as "unavailable"; the real cause (nothing listening, a
certificate from another CA, a server name the certificate does not hold, an expired
certificate, our own certificate refused) is only in the C core's log on one side or the other.
When a call is unavailable, the client repeats the handshake with Python's ``ssl`` module, with
the same CA, certificate, key and server name, and names the cause and its fix.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
from dataclasses import dataclass

from cryptography import x509

from fedlora.config import CoordinatorEndpoint

HANDSHAKE_S = 3.0  # a coordinator answers a TLS handshake in milliseconds
# OpenSSL's X509_V_ERR codes that name a certificate problem precisely.
_UNKNOWN_CA = {2, 7, 18, 19, 20, 21}  # 7: a CA of the same name signed it
_EXPIRED, _NOT_YET_VALID, _NAME_MISMATCH = 10, 9, 62
# TLS alerts that mean "your certificate": retrying cannot change the answer.
_CERTIFICATE_ALERTS = (
    "certificate",
    "unknown ca",
    "bad cert",
    "revoked",
    "expired",
    "access denied",
)


@dataclass(frozen=True)
class Diagnosis:
    message: str
    permanent: bool  # retrying cannot help (a certificate problem); False: the peer may come up


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _server_certificate(host: str, port: int, name: str) -> x509.Certificate | None:
    """The coordinator's certificate, fetched without verifying it (only to describe it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=5) as sock,
            ctx.wrap_socket(sock, server_hostname=name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def _speaks_http(host: str, port: int) -> bool:
    """Whether what listens at ``host:port`` answers a plain HTTP request as HTTP."""
    try:
        with socket.create_connection((host, port), timeout=HANDSHAKE_S) as sock:
            sock.settimeout(HANDSHAKE_S)
            sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
            return sock.recv(5) == b"HTTP/"
    except OSError:
        return False


def diagnose(endpoint: CoordinatorEndpoint) -> Diagnosis:
    """Repeat the TLS handshake the client makes and say what is wrong with it."""
    address = endpoint.address
    host, port = _split(address)
    connected = False
    try:
        with socket.create_connection((host, port), timeout=HANDSHAKE_S) as sock:
            connected = True
            if endpoint.insecure or endpoint.tls is None:
                return Diagnosis(f"{address} accepts connections, but gRPC calls fail there", False)
            tls = endpoint.tls
            ctx = ssl.create_default_context(cafile=str(tls.ca))
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
            ctx.set_alpn_protocols(["h2"])
            name = endpoint.server_name or host
            with ctx.wrap_socket(sock, server_hostname=name) as conn:
                # TLS 1.3: the server judges our certificate after the handshake; its verdict
                # arrives with the first read.
                conn.settimeout(3)
                conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                answer = b"?"
                with contextlib.suppress(TimeoutError):
                    answer = conn.recv(1)
                if not answer:  # closed at once: the server did not accept our certificate
                    raise ssl.SSLError("connection closed by the coordinator after the handshake")
    except ConnectionRefusedError:
        return Diagnosis(
            f"nothing is listening on {address} (connection refused): is the coordinator "
            "running, and is coordinator.address right?",
            False,
        )
    except ssl.SSLCertVerificationError as exc:
        return _verification(exc, endpoint, host, port)
    except ssl.SSLError as exc:
        reason = (getattr(exc, "reason", None) or str(exc)).lower().replace("_", " ")
        if any(w in reason for w in ("wrong version number", "record layer", "http request")):
            what = (
                "an HTTP server"
                if _speaks_http(host, port)
                else "a service that does not speak TLS"
            )
            return Diagnosis(
                f"{address} is {what}, not a fedlora coordinator (it answered the TLS handshake "
                "with something else): check coordinator.address and its port",
                True,
            )
        if "alert" in reason and any(w in reason for w in _CERTIFICATE_ALERTS):
            return Diagnosis(
                f"the coordinator at {address} refused this client's certificate ({reason}): "
                "coordinator.tls.cert must be issued by the federation's CA to this client's id, "
                "be unexpired and not revoked",
                True,
            )
        if (
            "closed by the coordinator" in reason
        ):  # no alert: maybe our certificate, maybe a restart
            return Diagnosis(
                f"the coordinator at {address} closed the connection right after the TLS "
                "handshake: it most likely refused this client's certificate (issued by the "
                "federation's CA to this client's id?), or it is restarting",
                False,
            )
        # An EOF or a reset: a coordinator restarting, or the network; worth retrying.
        return Diagnosis(f"TLS with {address} was cut off ({reason})", False)
    except TimeoutError:
        if connected:
            return Diagnosis(
                f"{address} accepts TCP connections but never answers the TLS handshake (no reply "
                f"in {HANDSHAKE_S:.0f} s): it is not a fedlora coordinator; check "
                "coordinator.address and its port",
                True,
            )
        return Diagnosis(
            f"{address} does not answer (timed out): a firewall, or a wrong host?", False
        )
    except OSError as exc:
        return Diagnosis(f"cannot reach {address}: {exc.strerror or exc}", False)
    return Diagnosis(
        f"the TLS handshake with {address} succeeds, but gRPC calls fail there (is it a "
        "fedlora coordinator?)",
        False,
    )


def _verification(
    exc: ssl.SSLCertVerificationError, endpoint: CoordinatorEndpoint, host: str, port: int
) -> Diagnosis:
    address, code = endpoint.address, exc.verify_code
    assert endpoint.tls is not None
    name = endpoint.server_name or host
    cert = _server_certificate(host, port, name)
    if code == _NAME_MISMATCH:
        held = ", ".join(_names(cert)) if cert is not None else "other names"
        return Diagnosis(
            f"the coordinator's certificate at {address} is for {held}, not {name!r}: connect to "
            "one of those names, set coordinator.server_name to one of them, or reissue the "
            f"coordinator's certificate with {name!r}",
            True,
        )
    if code in (_EXPIRED, _NOT_YET_VALID) and cert is not None:
        when = cert.not_valid_after_utc if code == _EXPIRED else cert.not_valid_before_utc
        what = "expired on" if code == _EXPIRED else "is valid only from"
        now = datetime.datetime.now(datetime.timezone.utc).date()
        return Diagnosis(
            f"the coordinator's certificate at {address} {what} {when.date()} (today is {now}): "
            "the coordinator must renew it",
            True,
        )
    if code in _UNKNOWN_CA:
        return Diagnosis(
            f"the coordinator's certificate at {address} is not signed by the CA in "
            f"coordinator.tls.ca ({endpoint.tls.ca}): an unknown CA — use the federation's CA "
            "certificate, or check that coordinator.address names this federation's coordinator",
            True,
        )
    return Diagnosis(
        f"the coordinator's certificate at {address} does not verify: {exc.verify_message}", True
    )
