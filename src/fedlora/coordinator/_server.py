"""The coordinator service: gRPC server with mTLS, health checking and reflection."""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedlora._files import StateLock, check_private
from fedlora.certs import check_certificate
from fedlora.config import CoordinatorConfig
from fedlora.coordinator._build import build_engine, read_file
from fedlora.coordinator._driver import Driver
from fedlora.coordinator._engine import Coordinator
from fedlora.coordinator._keygen import KeygenService, keygen_service, write_generated_key
from fedlora.coordinator._observe import JsonFormatter, Metrics, quiet_grpc_tracebacks
from fedlora.coordinator._servicer import (
    AuditServicer,
    FederationServicer,
    KeygenServicer,
    Slot,
)
from fedlora.crypto import select_backend
from fedlora.errors import ConfigError, FedLoraError, UnavailableError
from fedlora.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    federation_pb2,
    federation_pb2_grpc,
    keygen_pb2,
    keygen_pb2_grpc,
)

log = logging.getLogger("fedlora.coordinator")

SERVICES = (
    federation_pb2.DESCRIPTOR.services_by_name["Federation"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name,
    keygen_pb2.DESCRIPTOR.services_by_name["Keygen"].full_name,
)


@dataclass
class Running:
    server: grpc.Server
    port: int
    slot: Slot
    lock: StateLock
    driver: Driver | None = None
    metrics: Metrics | None = None  # the Prometheus endpoint, when server.metrics is set
    keygen: KeygenService | None = None  # while (and after) the holders generate the key
    ready: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None  # why the engine could not start after key generation

    @property
    def engine(self) -> Coordinator:
        engine = self.slot.engine
        if engine is None:
            raise UnavailableError("the federation's key is still being generated")
        return engine

    def wait_ready(self, timeout: float | None = None) -> Coordinator:
        """The engine, once the key exists (at once for a dealt key)."""
        if not self.ready.wait(timeout):
            raise UnavailableError("the holders have not generated the federation's key yet")
        if self.failure is not None:
            raise ConfigError(self.failure)
        return self.engine

    def stop(self, grace: float = 10.0) -> None:
        """Refuse new calls, let in-flight ones finish for ``grace`` seconds, then stop."""
        if self.keygen is not None:
            self.keygen.done.set()  # a waiting start-up thread gives up
        if self.driver is not None:
            self.driver.stop()
        self.server.stop(grace).wait()
        if self.metrics is not None:
            self.metrics.close()
        self.lock.release()


def _check_free(address: str) -> None:
    """Refuse an address another process holds, before gRPC tries (it would log a C-level error).

    gRPC also binds with SO_REUSEPORT by default, which would let a second coordinator share the
    port silently; the server below turns that off, and this check names the cause.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if port == "0":
        return
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"server.listen: cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"server.listen: {address} is in use by another process (another coordinator?); "
                    "stop it or choose another port"
                ) from None
            raise ConfigError(f"server.listen: cannot bind {address}: {exc.strerror}") from None


def _bind(server: grpc.Server, config: CoordinatorConfig, address: str) -> int:
    _check_free(address)
    try:
        if config.server.insecure:
            return int(server.add_insecure_port(address))
        tls = config.server.tls
        assert tls is not None
        check_private(tls.key, "server.tls.key")
        check_certificate(tls.cert, tls.ca, "server.tls.cert")
        credentials = grpc.ssl_server_credentials(
            [(read_file(tls.key, "server.tls.key"), read_file(tls.cert, "server.tls.cert"))],
            root_certificates=read_file(tls.ca, "server.tls.ca"),
            require_client_auth=True,
        )
        return int(server.add_secure_port(address, credentials))
    except RuntimeError:  # gRPC's "Failed to bind": a race with another process
        raise ConfigError(f"server.listen: cannot bind {address}") from None


def create_server(
    config: CoordinatorConfig,
    engine: Coordinator | None = None,
    *,
    port: int | None = None,
    accept_config_change: bool = False,
) -> Running:
    """Bind, then build the engine (which may write its first audit entries), then serve.

    Binding first means a coordinator that cannot serve writes nothing: a port in use leaves no
    ``federation_started`` or opened round behind. ``port=0`` (or a listen address ending in :0)
    picks a free port. The state folder is locked while the server runs.
    """
    quiet_grpc_tracebacks()
    # Each party may hold at most one upload of each kind open at a time (the engine refuses a
    # second), so two threads per party plus headroom are never all taken by slow streams.
    workers = max(32, 2 * len(config.parties) + 16)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedlora-rpc"),
        options=[
            # A connection that died silently is noticed within ~40 s, which ends its streams
            # and frees the party's upload slot (the default is two hours).
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.max_receive_message_length", config.server.chunk_bytes + (64 << 10)),
            ("grpc.max_send_message_length", config.server.chunk_bytes + (64 << 10)),
            # Headers are small (an identity, a deadline); a hostile client sends no more.
            ("grpc.max_metadata_size", 16 << 10),
            # Never share the port with another process (a second coordinator would bind silently).
            ("grpc.so_reuseport", 0),
        ],
    )
    address = config.server.listen
    if port is not None:
        address = f"{address.rsplit(':', 1)[0]}:{port}"
    bound = _bind(server, config, address)
    if bound == 0:
        raise ConfigError(f"server.listen: cannot bind {address}")
    lock = StateLock(config.state_dir, "coordinator")
    slot = Slot(engine)
    keygen = None
    try:
        if engine is None:
            # No key yet and the holders generate it: serve Keygen first (docs/cryptography.md)
            keygen = keygen_service(config, accept_config_change=accept_config_change)
            if keygen is None:
                slot.engine = build_engine(config, accept_config_change=accept_config_change)
    except BaseException:
        lock.release()
        # A gRPC server that never started keeps its bound port until it is collected; starting
        # it (nothing is registered: no call is served) lets stop() release it now.
        server.start()
        server.stop(None).wait()
        raise
    insecure = config.server.insecure
    federation_pb2_grpc.add_FederationServicer_to_server(FederationServicer(slot, insecure), server)
    audit_pb2_grpc.add_AuditServicer_to_server(AuditServicer(slot, insecure), server)
    if keygen is not None:
        unrevoked = {p.id for p in config.parties if not p.revoked}
        keygen_pb2_grpc.add_KeygenServicer_to_server(
            KeygenServicer(keygen, lambda: unrevoked, insecure), server
        )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    metrics = None
    if config.server.metrics:
        try:
            metrics = Metrics(slot, config.server.metrics, keygen)
        except OSError as exc:
            lock.release()
            server.start()
            server.stop(None).wait()
            raise ConfigError(
                f"server.metrics: cannot serve metrics on {config.server.metrics}: {exc.strerror}"
            ) from None
        if slot.engine is not None:
            slot.engine.audit.observers.append(metrics)
        if keygen is not None:
            keygen.observers.append(metrics)
    server.start()
    running = Running(server, bound, slot, lock, metrics=metrics, keygen=keygen)
    if slot.engine is not None:
        running.driver = Driver(slot.engine).start()
        running.ready.set()
    else:
        threading.Thread(
            target=_after_keygen,
            args=(running, config, accept_config_change),
            name="fedlora-keygen",
            daemon=True,
        ).start()
    return running


def _after_keygen(running: Running, config: CoordinatorConfig, accept_config_change: bool) -> None:
    """Once the holders' key is accepted: write it, build the engine, start the rounds."""
    assert running.keygen is not None
    running.keygen.done.wait()
    outcome = running.keygen.outcome
    if outcome is None:  # stopped before a key
        return
    try:
        write_generated_key(config, outcome)
        engine = build_engine(config, accept_config_change=accept_config_change)
    except FedLoraError as exc:
        running.failure = str(exc)
        log.error(f"cannot start after key generation: {exc}")
        running.ready.set()
        return
    if running.metrics is not None:
        engine.audit.observers.append(running.metrics)
    running.slot.engine = engine
    running.driver = Driver(engine).start()
    running.ready.set()


def serve(
    config: CoordinatorConfig,
    *,
    exit_when_finished: bool = False,
    accept_config_change: bool = False,
    log_format: str = "text",
) -> int:
    """Serve until SIGTERM/SIGINT; shut down gracefully.

    A federation's end is an event, not an exit: after the last round the coordinator keeps
    serving the audit log and the global adapters, so participants can fetch the final model and
    prove their receipts. ``exit_when_finished`` stops it a few seconds after the end (batch jobs).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # Handlers first: a SIGTERM that arrives while the server starts is a graceful stop too.
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    running = create_server(config, accept_config_change=accept_config_change)
    fl = config.federated_learning
    mode = "INSECURE (no TLS) — loopback demo only" if config.server.insecure else "mTLS"
    log.info(
        f"fedlora coordinator for {config.federation_id!r} on port {running.port} ({mode}); "
        f"{len(config.parties)} parties, {fl.rounds} rounds, participant_threshold {fl.participant_threshold}, "
        f"state in {config.state_dir}"
    )
    log.info(select_backend(config.crypto.backend)[1])
    last = None
    if not running.ready.is_set():
        assert config.keys.generation is not None
        log.info(
            "waiting for the share holders to generate the federation's key: "
            + ", ".join(config.keys.generation.holders)
        )
    while not done.wait(0.5):
        if running.failure is not None:
            running.stop(grace=1)
            raise ConfigError(running.failure)
        engine = running.slot.engine
        if engine is None:
            continue
        status = (engine.round.number if engine.round else 0, engine.stage)
        if status != last:
            if engine.finished:
                log.info(
                    f"federation finished after {fl.rounds} rounds (global version "
                    f"{engine.global_version}); still serving the audit log and the global adapters"
                    + (" for a few seconds" if exit_when_finished else " until stopped (Ctrl-C)")
                )
            else:
                log.info(f"round {status[0]}: {engine.describe_stage()}")
            last = status
        if engine.finished and exit_when_finished:
            done.wait(5.0)  # let clients read the final status and download the final adapter
            break
    log.info("shutting down: finishing in-flight calls")
    running.stop(grace=10)
    return 0
