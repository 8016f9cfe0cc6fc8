"""A federation in one process: the real coordinator engine and real clients, no sockets.

:class:`InProcessTransport` is a :class:`fedlora.client.Transport` that calls the engine
directly (the same calls the gRPC servicer makes, the same errors as the gRPC transport raises);
:class:`InProcessFederation` drives a whole federation step by step, deterministically — the
engine's :meth:`~fedlora.coordinator.Coordinator.tick` between client steps, no threads. The
crypto demo, the accuracy benchmark and the tests use it instead of re-implementing the protocol.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from rich.console import Console

from fedlora.audit import SignedCheckpoint
from fedlora.client import Client
from fedlora.client._transport import Progress
from fedlora.config import CodecConfig, load_client_config, load_coordinator_config
from fedlora.coordinator import Coordinator, build_engine
from fedlora.crypto import ModexpBackend
from fedlora.errors import FedLoraError, RemoteError, VerificationError
from fedlora.protocol import (
    ContributionHeader,
    DecryptionTask,
    JoinInfo,
    PartialHeader,
    Receipt,
    RoundStatus,
    TicketAck,
    assemble_task,
)

Vector = npt.NDArray[np.float32]


def _remote(exc: FedLoraError) -> RemoteError:
    return RemoteError(str(exc), type(exc))


class InProcessTransport:
    """The client side of an in-process federation: engine calls as ``party_id``."""

    def __init__(self, engine: Coordinator, party_id: str, *, chunk_bytes: int = 1 << 20) -> None:
        self.engine = engine
        self.party_id = party_id
        self.chunk_bytes = chunk_bytes

    def _party(self, method: str):  # type: ignore[no-untyped-def]
        return self.engine.authenticate(self.party_id, method)

    def join(self, spec_json: str = "") -> JoinInfo:
        try:
            return self.engine.join_info(self._party("Join"), spec_json)
        except FedLoraError as exc:
            raise _remote(exc) from None

    def round_status(self) -> RoundStatus:
        try:
            return self.engine.status(self._party("GetRound"))
        except FedLoraError as exc:
            raise _remote(exc) from None

    def download_global(self, version: int, max_bytes: int | None = None) -> tuple[bytes, bytes]:
        try:
            self._party("DownloadGlobal")
            digest, chunks = self.engine.global_chunks(version)
        except FedLoraError as exc:
            raise _remote(exc) from None
        data = bytearray()
        for chunk in chunks:
            data += chunk
            if max_bytes is not None and len(data) > max_bytes:
                raise VerificationError(
                    f"global adapter v{version} is larger than the model ({max_bytes} bytes)"
                )
        return bytes(data), digest

    def upload_contribution(
        self, header: ContributionHeader, records: bytes, on_progress: Progress | None = None
    ) -> Receipt:
        size = self.chunk_bytes
        chunks = (records[i : i + size] for i in range(0, len(records), size))
        try:
            receipt = self.engine.accept_contribution(
                self._party("UploadContribution"), header, chunks
            )
        except FedLoraError as exc:
            raise _remote(exc) from None
        if on_progress is not None:
            on_progress(len(records))
        return receipt

    def decryption_task(self, round_number: int, *, manifest_only: bool) -> DecryptionTask:
        try:
            manifest, stream = self.engine.decryption_task(
                self._party("GetDecryptionTask"), round_number, manifest_only=manifest_only
            )
        except FedLoraError as exc:
            raise _remote(exc) from None

        def parts() -> Iterator[tuple[str, bytes]]:
            try:
                yield from stream
            except FedLoraError as exc:  # the engine's, not the assembler's own refusals
                raise _remote(exc) from None

        return assemble_task(manifest, parts())

    def submit_ticket(self, round_number: int, ticket: bytes, signature: bytes) -> TicketAck:
        try:
            signatures, quorum = self.engine.accept_ticket(
                self._party("SubmitTicket"), round_number, ticket, signature
            )
        except FedLoraError as exc:
            raise _remote(exc) from None
        return TicketAck(signatures, quorum)

    def submit_partial(self, header: PartialHeader, values: bytes) -> None:
        try:
            self.engine.accept_partial(self._party("SubmitPartialDecryption"), header, [values])
        except FedLoraError as exc:
            raise _remote(exc) from None

    def checkpoint(self) -> SignedCheckpoint:
        return self.engine.checkpoint()

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        try:
            return self.engine.audit.consistency(old_size, new_size)
        except FedLoraError as exc:
            raise _remote(exc) from None

    def audit_entries(self, start: int, limit: int) -> list[bytes]:
        try:
            return list(self.engine.audit.entries(start, limit))
        except FedLoraError as exc:
            raise _remote(exc) from None

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        try:
            return list(self.engine.audit.inclusion(index, tree_size)[1])
        except FedLoraError as exc:
            raise _remote(exc) from None

    def close(self) -> None:
        pass


@dataclass
class GivenDelta:
    """A :class:`fedlora.client.LocalTrainer` whose "training" adds a delta the caller sets
    (the demo's and the benchmark's deltas come from elsewhere; the protocol is the real one)."""

    num_parameters: int
    num_examples: int = 1
    delta: Vector | None = None

    def train(self, global_vector: np.ndarray, steps: int, on_step: object = None) -> np.ndarray:
        if self.delta is None:
            raise FedLoraError("no delta was given for this round")
        if callable(on_step):
            for _ in range(steps):
                on_step()
        return (global_vector.astype(np.float64) + self.delta).astype(np.float32)

    def evaluate(self, vector: np.ndarray) -> float:
        return float("nan")

    def reseed(self, seed: int) -> None:
        """The delta is given: nothing is drawn."""


class InProcessFederation:
    """A real engine and real clients, driven in turn until each round ends."""

    def __init__(self, engine: Coordinator, clients: Mapping[str, Client]) -> None:
        self.engine = engine
        self.clients = dict(clients)
        self.feds = {pid: c.join() for pid, c in self.clients.items()}
        engine.tick()  # round 1 opens once min_clients parties have joined
        self._seen: dict[str, set[tuple[int, str]]] = {pid: set() for pid in self.clients}

    @classmethod
    def from_configs(
        cls,
        coordinator_config: str | object,
        client_configs: Mapping[str, object],
        *,
        trainers: Mapping[str, object] | None = None,
        num_parameters: int | None = None,
        codec: CodecConfig | None = None,
        run_name: str | None = None,
        clock: Callable[[], float] | None = None,
        backend: ModexpBackend | None = None,
        quiet: bool = True,
        console: Console | None = None,
    ) -> InProcessFederation:
        """Load the YAML files (as the services do) and join every client in process.

        ``num_parameters`` and ``codec`` override the coordinator's model size and codec (for
        given-delta trainers); ``run_name`` keeps this run's state (the coordinator's log, the
        clients' ledgers and anchors) in a subfolder of each state folder, so one set of keys
        serves several independent runs;
        ``clock`` replaces the engine's wall clock (tests move deadlines without sleeping);
        ``backend`` does every role's modular exponentiation.
        """
        config = load_coordinator_config(coordinator_config)  # type: ignore[arg-type]
        if num_parameters is not None:
            config = replace(config, model=replace(config.model, num_parameters=num_parameters))
        if codec is not None:
            config = replace(config, codec=codec)
        if run_name is not None:
            config = replace(config, state_dir=config.state_dir / run_name)
        engine = build_engine(config, clock=clock or time.time, backend=backend)
        console = console or Console(quiet=quiet)
        clients = {}
        for pid, path in client_configs.items():
            cc = load_client_config(path)  # type: ignore[arg-type]
            if run_name is not None:
                cc = replace(cc, state_dir=cc.state_dir / run_name)
            clients[pid] = Client(
                cc,
                trainer=(trainers or {}).get(pid),  # type: ignore[arg-type]
                console=console,
                transport=InProcessTransport(engine, pid, chunk_bytes=config.server.chunk_bytes),
                backend=backend,
            )
        return cls(engine, clients)

    @property
    def round_number(self) -> int:
        return self.engine.round.number if self.engine.round else 0

    def step(self, parties: Iterable[str] | None = None, *, tick: bool = True) -> None:
        """One pass over the open round: the engine decides, then each client does what its
        status asks; the pass stops where the round ends (the next round is the next pass's).
        With ``tick`` false the engine only answers (its deadlines and heavy work wait)."""
        if tick:
            self.engine.tick()
        number = self.round_number
        for pid in parties if parties is not None else self.clients:
            if self.round_number != number:
                return
            client = self.clients[pid]
            status = client.transport.round_status()
            client.step(self.feds[pid], status, self._seen[pid])
            if tick:
                self.engine.tick()

    def run_round(self, parties: Iterable[str] | None = None, max_steps: int = 50) -> int:
        """Drive the open round until it ends (closed or failed); return its number."""
        number = self.round_number
        chosen = list(parties) if parties is not None else None
        for _ in range(max_steps):
            if self.engine.finished:
                self.step(chosen, tick=False)  # every client keeps the final version
                return number
            if self.round_number != number:
                return number
            self.step(chosen)
        raise FedLoraError(f"round {number} did not end in {max_steps} steps")

    def global_vector(self, version: int | None = None) -> Vector:
        v = self.engine.global_version if version is None else version
        return self.engine.store.load_global(v)
