"""A coordinator that lies, built from the real one: the real engine, store, audit log and gRPC
server, with the decryption path replaced by views the attacker chooses per share holder.

Everything else is real: contributions are uploaded, validated, signed and stored by the real
engine; the clients are :class:`fedlora.client.Client` objects with their real ledgers, talking
gRPC over mTLS.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from fedlora._setup import Layout
from fedlora.client import Client
from fedlora.client._holder import Holder
from fedlora.config import Party, load_client_config, load_coordinator_config
from fedlora.coordinator import Coordinator, build_engine
from fedlora.crypto import (
    add_ciphertext_vectors,
    ciphertext_vector_digest,
    sign_digest,
    ticket_digest,
)
from fedlora.protocol import DecryptionManifest as Manifest
from fedlora.protocol import PartialHeader, unpack_records
from tests.integration import helpers as h


@dataclass
class View:
    """What the attacker shows: a manifest (its round and contributions) and the aggregate."""

    manifest: Manifest
    blobs: dict[str, bytes]
    aggregate: bytes
    extra_signatures: dict[str, bytes] = field(default_factory=dict)  # colluders' signatures
    aggregated_index: int = -1  # the `aggregated` entry the attacker logged for this view


class LyingCoordinator(Coordinator):
    """Serves attacker-chosen decryption tasks and keeps every ticket signature and partial."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.views: dict[tuple[str, int], View] = {}  # (holder or "*", task round) -> view
        self.signatures: dict[bytes, dict[str, bytes]] = {}  # ticket -> holder -> signature
        self.partials: list[tuple[str, PartialHeader]] = []
        # The attacker lets its colluding contributors upload anything: no proof is checked.
        self.secure_sum.check_proof = lambda records, proof, context: None  # type: ignore[method-assign]

    def decryption_task(self, party: Party, round_number: int, *, manifest_only: bool = False):  # type: ignore[no-untyped-def]
        view = self.views.get((party.id, round_number)) or self.views.get(("*", round_number))
        if view is None:
            return super().decryption_task(party, round_number, manifest_only=manifest_only)
        # Show every signature collected, on any ticket, and the colluders' (a party may repeat).
        signed = list(view.extra_signatures.items())
        for sigs in self.signatures.values():
            signed += sigs.items()
        checkpoint = self.checkpoint()
        index = view.aggregated_index if view.aggregated_index >= 0 else self.round.aggregated_index  # type: ignore[union-attr]
        manifest = replace(
            view.manifest,
            ticket_signatures=tuple(signed),
            checkpoint=checkpoint,
            aggregated_entry=self.audit.entries(index, 1)[0],
            aggregated_index=index,
            aggregated_inclusion=tuple(self.audit.inclusion(index, checkpoint.tree_size)[1]),
        )

        def stream() -> Iterator[tuple[str, bytes]]:
            if manifest_only:
                return
            yield from view.blobs.items()
            yield "", view.aggregate

        return manifest, stream()

    def accept_ticket(self, party: Party, round_number: int, ticket: bytes, signature: bytes):  # type: ignore[no-untyped-def]
        self.signatures.setdefault(ticket, {})[party.id] = signature
        return len(self.signatures[ticket]), self.quorum

    def accept_partial(self, party: Party, header: PartialHeader, chunks: Iterable[bytes]) -> None:
        for _ in chunks:
            pass
        self.partials.append((party.id, header))


def start(layout: Layout):  # type: ignore[no-untyped-def]
    config = load_coordinator_config(layout.coordinator_config)
    real = build_engine(config)  # loads the keys exactly as the real service does
    engine = LyingCoordinator(config, real.key, real.signing_key)
    return engine, h.serve(layout, config, engine)


def view(
    engine: Coordinator,
    stored_round: int,
    participants: list[str],
    *,
    manifest_round: int | None = None,
    colluders: Iterable[str] = (),
    layout: Layout | None = None,
    ticket_for: bytes | None = None,
    log: bool = True,
) -> View:
    """A task built from the contributions genuinely stored for ``stored_round``.

    ``colluders`` sign ``ticket_for`` (if given) with their real signing keys. With ``log`` the
    attacker writes the view's ticket into its audit log (holders require that); without, the
    view is served with the round's honest ``aggregated`` entry.
    """
    assert engine.key is not None
    r = engine.round
    assert r is not None
    width = engine.width
    blobs, cts_total = {}, None
    for pid in participants:
        data = engine.store.contribution_path(stored_round, pid).read_bytes()
        blobs[pid] = data
        cts = unpack_records(data, width)
        cts_total = (
            cts
            if cts_total is None
            else add_ciphertext_vectors(engine.key.paillier, cts_total, cts)
        )
    assert cts_total is not None
    manifest = Manifest(
        federation_id=engine.config.federation_id,
        round_number=stored_round if manifest_round is None else manifest_round,
        value_count=engine.num_parameters,
        codec=engine.codec,
        key_fingerprint=engine.fingerprint,
        aggregate_digest=ciphertext_vector_digest(engine.key.paillier, cts_total),
        record_count=engine.record_count,
        global_version=r.global_version,
        global_digest=r.global_digest,
        entries=engine.manifest_entries(participants),
        ticket_signatures=(),
        checkpoint=engine.checkpoint(),
    )
    extra = {}
    if ticket_for is not None and layout is not None:
        extra = {c: sign_digest(h.signing_key(layout, c), ticket_for) for c in colluders}
    aggregate = b"".join(c.to_bytes(width, "big") for c in cts_total)
    index = -1
    if log:
        ticket = ticket_digest(
            federation_id=engine.config.federation_id,
            round_number=manifest.round_number,
            key_fingerprint=engine.fingerprint,
            aggregate_digest=manifest.aggregate_digest,
            global_version=r.global_version,
            global_digest=r.global_digest,
            contributions=sorted((p, r.contributions[p].contribution_digest) for p in participants),
        )
        index = engine.audit.append(  # a well-formed entry: the attacker logs what holders check
            "aggregated",
            round=manifest.round_number,
            participants=sorted(participants),
            total_weight=sum(r.contributions[p].weight for p in participants),
            contribution_digests=[
                r.contributions[p].ciphertexts_digest.hex() for p in sorted(participants)
            ],
            aggregate_digest=manifest.aggregate_digest.hex(),
            ticket=ticket.hex(),
        )
    return View(manifest, blobs, aggregate, extra, index)


def client(layout: Layout, pid: str) -> Client:
    """A real client that has joined (its key share opened, its ledger loaded)."""
    c = Client(load_client_config(layout.client_configs[pid]), console=Console(quiet=True))
    c.join()
    return c


def holder(layout: Layout, pid: str) -> Holder:
    """A real share holder (its client joined; its key share opened, its ledger loaded)."""
    h = client(layout, pid).holder
    assert h is not None, f"{pid} holds no key share"
    return h


def ledger_kinds(layout: Layout, pid: str) -> list[str]:
    import json

    path = Path(layout.root) / "clients" / pid / "decryptor-ledger.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["kind"] for line in path.read_text().splitlines()]
