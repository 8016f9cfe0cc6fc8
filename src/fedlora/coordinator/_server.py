"""The coordinator service: gRPC server with mTLS, health checking and reflection."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedlora.config import CoordinatorConfig
from fedlora.coordinator._build import build_engine, read_file
from fedlora.coordinator._driver import Driver
from fedlora.coordinator._engine import Coordinator
from fedlora.coordinator._servicer import AuditServicer, FederationServicer
from fedlora.errors import ConfigError
from fedlora.v1 import audit_pb2, audit_pb2_grpc, federation_pb2, federation_pb2_grpc

log = logging.getLogger("fedlora.coordinator")

SERVICES = (
    federation_pb2.DESCRIPTOR.services_by_name["Federation"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name,
)


@dataclass
class Running:
    server: grpc.Server
    port: int
    engine: Coordinator
    driver: Driver

    def stop(self, grace: float = 10.0) -> None:
        """Refuse new calls, let in-flight ones finish for ``grace`` seconds, then stop."""
        self.driver.stop()
        self.server.stop(grace).wait()


def create_server(
    config: CoordinatorConfig, engine: Coordinator | None = None, *, port: int | None = None
) -> Running:
    """Build and start the server; ``port=0`` (or a listen address ending in :0) picks a free port."""
    engine = engine or build_engine(config)
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
        ],
    )
    insecure = config.server.insecure
    federation_pb2_grpc.add_FederationServicer_to_server(
        FederationServicer(engine, insecure), server
    )
    audit_pb2_grpc.add_AuditServicer_to_server(AuditServicer(engine, insecure), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = config.server.listen
    if port is not None:
        address = f"{address.rsplit(':', 1)[0]}:{port}"
    if insecure:
        bound = server.add_insecure_port(address)
    else:
        tls = config.server.tls
        assert tls is not None
        credentials = grpc.ssl_server_credentials(
            [(read_file(tls.key, "server.tls.key"), read_file(tls.cert, "server.tls.cert"))],
            root_certificates=read_file(tls.ca, "server.tls.ca"),
            require_client_auth=True,
        )
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise ConfigError(f"server.listen: cannot bind {address}")
    server.start()
    return Running(server, bound, engine, Driver(engine).start())


def serve(config: CoordinatorConfig) -> int:
    """Run until SIGTERM/SIGINT or until every round is over; shut down gracefully."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    running = create_server(config)
    fl = config.federated_learning
    mode = "INSECURE (no TLS) — loopback demo only" if config.server.insecure else "mTLS"
    log.info(
        f"fedlora coordinator for {config.federation_id!r} on port {running.port} ({mode}); "
        f"{len(config.parties)} parties, {fl.rounds} rounds, participant_threshold {fl.participant_threshold}, "
        f"state in {config.state_dir}"
    )
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    last = None
    while not done.wait(0.5):
        status = (running.engine.round.number if running.engine.round else 0, running.engine.stage)
        if status != last:
            log.info(f"round {status[0]}: {status[1].value}")
            last = status
        if running.engine.finished:
            done.wait(2.0)  # let clients read the final status
            break
    log.info("shutting down: finishing in-flight calls")
    running.stop(grace=10)
    return 0
