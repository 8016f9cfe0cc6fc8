"""Helpers for integration tests: real certificates, real keys, real gRPC — nothing mocked."""

from __future__ import annotations

import functools
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from rich.console import Console

from fedlora import rpc
from fedlora._setup import Layout
from fedlora._setup import prepare_federation as _prepare_federation
from fedlora.client import Client
from fedlora.config import CoordinatorConfig, load_client_config, load_coordinator_config
from fedlora.coordinator import Coordinator, Running, create_server
from fedlora.crypto import (
    CodecParams,
    ThresholdPublicKey,
    ciphertext_vector_digest,
    ciphertext_width,
    encode,
    encrypt_and_prove,
    pack_records,
    sign_digest,
)
from fedlora.protocol import ContributionHeader, contribution_statement, knowledge_context
from fedlora.v1 import federation_pb2, federation_pb2_grpc


def prepare_federation(root: Path, **kw: Any) -> Layout:
    """:func:`fedlora._setup.prepare_federation` with ``min_clients: 1`` unless a test sets it.

    Tests that drive one party by hand need round 1 open as soon as that party joins; waiting
    for ``participant_threshold`` parties (the product's default) has its own tests.
    """
    kw.setdefault("min_clients", 1)
    return _prepare_federation(root, **kw)


@functools.cache
def _spec(config_path: Path) -> str:
    from fedlora.client import make_trainer
    from fedlora.client._spec import federation_spec
    from fedlora.protocol import canonical_spec

    config = load_client_config(config_path)
    return canonical_spec(federation_spec(config, make_trainer(config)))


def join_request(layout: Layout, party: str) -> federation_pb2.JoinRequest:
    """A Join as the party's real client sends it: with its model's federation spec."""
    return federation_pb2.JoinRequest(
        client_id=party, spec_json=_spec(layout.client_configs[party])
    )


def join_all(layout: Layout) -> None:
    """Every party joins first, so no round closes early before the last one uploads (a round
    closes once every *joined* party has contributed)."""
    for pid in layout.client_configs:
        stub(layout, pid).Join(join_request(layout, pid))


def channel(
    layout: Layout, party: str, *, cert_dir: Path | None = None, ca: Path | None = None
) -> grpc.Channel:
    certs = cert_dir or layout.root / "certs"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(ca or layout.root / "ca" / "ca.pem").read_bytes(),
        private_key=(certs / f"{party}.key").read_bytes(),
        certificate_chain=(certs / f"{party}.pem").read_bytes(),
    )
    return grpc.secure_channel(
        f"127.0.0.1:{layout.port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    )


def serve(
    layout: Layout, config: CoordinatorConfig | None = None, engine: Coordinator | None = None
) -> Running:
    """Start the real gRPC coordinator. The first start binds port 0 (the OS picks a free port
    at bind time: nothing can take it in between) and points every config at it; a restart binds
    the same port again."""
    config = config or load_coordinator_config(layout.coordinator_config)
    running = create_server(config, engine, port=layout.port)
    if layout.port == 0:
        layout.use_port(running.port)
    return running


def stub(layout: Layout, party: str, **kw) -> federation_pb2_grpc.FederationStub:  # type: ignore[no-untyped-def]
    return federation_pb2_grpc.FederationStub(channel(layout, party, **kw))


def signing_key(layout: Layout, party: str) -> Ed25519PrivateKey:
    key = load_pem_private_key(
        (layout.root / "keys" / f"{party}.ed25519").read_bytes(), password=None
    )
    assert isinstance(key, Ed25519PrivateKey)
    return key


def threshold_key(layout: Layout) -> ThresholdPublicKey:
    return ThresholdPublicKey.from_json(
        (layout.root / "federation" / "threshold-key.json").read_bytes()
    )


def codec_of(join: federation_pb2.JoinResponse) -> CodecParams:
    return rpc.codec_from_proto(join.codec)


def contribution(
    layout: Layout,
    party: str,
    round_number: int,
    *,
    signed_round: int | None = None,
    signer: Ed25519PrivateKey | None = None,
    ciphertexts: list[int] | None = None,
    plaintexts: list[int] | None = None,
    weight: int = 1,
    proof: bytes | None = None,
) -> tuple[federation_pb2.ContributionHeader, bytes]:
    """A correctly formed contribution, or one with exactly the flaw asked for.

    ``plaintexts`` are encrypted and proven as given (a malicious sender knows what it sends);
    ``ciphertexts`` are sent as given, with ``proof`` (default: none at all).
    """
    s = stub(layout, party)
    join = s.Join(join_request(layout, party))
    status = s.GetRound(federation_pb2.RoundQuery())
    key, codec = threshold_key(layout), codec_of(join)
    context = knowledge_context(
        "fedlora-demo", signed_round or round_number, party, key.fingerprint
    )
    if ciphertexts is None:
        if plaintexts is None:
            delta = np.random.default_rng(round_number).normal(0, 0.1, join.num_parameters)
            plaintexts = encode(delta, codec, weight=weight)
        ciphertexts, knowledge = encrypt_and_prove(key.paillier, plaintexts, context=context)
        proof = knowledge.to_bytes(key.paillier) if proof is None else proof
    width = ciphertext_width(key.paillier)
    digest = ciphertext_vector_digest(key.paillier, ciphertexts)
    unsigned = ContributionHeader(
        round_number=round_number,
        weight=weight,
        value_count=join.num_parameters,
        record_count=len(ciphertexts),
        ciphertexts_digest=digest,
        key_fingerprint=key.fingerprint,
        codec_digest=codec.digest(),
        signature=b"",
        global_version=status.global_version,
        global_digest=status.global_digest,
        knowledge_proof=proof or b"",
    )
    signed = contribution_statement(
        "fedlora-demo", party, replace(unsigned, round_number=signed_round or round_number), digest
    )
    header = replace(unsigned, signature=sign_digest(signer or signing_key(layout, party), signed))
    return rpc.contribution_header_to_proto(header), pack_records(ciphertexts, width)


def upload(
    layout: Layout, party: str, header, data: bytes, *, chunk: int = 4096, header_first: bool = True
):  # type: ignore[no-untyped-def]
    messages = [
        federation_pb2.ContributionChunk(data=data[i : i + chunk])
        for i in range(0, len(data), chunk)
    ]
    first = federation_pb2.ContributionChunk(header=header)
    ordered = [first, *messages] if header_first else [*messages, first]
    return stub(layout, party).UploadContribution(iter(ordered))


def run_clients(
    layout: Layout,
    parties: list[str] | None = None,
    timeout: float = 180,
    trainers: dict[str, object] | None = None,
) -> dict[str, object]:
    """Run real clients in threads until they finish; returns exit codes or exceptions."""
    results: dict[str, object] = {}

    def run(pid: str) -> None:
        try:
            results[pid] = Client(
                load_client_config(layout.client_configs[pid]),
                console=Console(quiet=True),
                trainer=(trainers or {}).get(pid),  # type: ignore[arg-type]
            ).run()
        except Exception as exc:
            results[pid] = exc

    threads = [
        threading.Thread(target=run, args=(pid,), daemon=True)
        for pid in (parties or list(layout.client_configs))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results
