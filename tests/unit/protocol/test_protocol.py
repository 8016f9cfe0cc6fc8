"""fedlora.protocol on its own: no protobuf, no sockets, no files.

One round end to end through the pure functions (three contributors, a 3-of-5 key), then each
check playing the attacker: a lying aggregator, a forged entry, a replayed partial.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from fedlora.audit import SignedCheckpoint
from fedlora.config import ClientPolicy, TestingOptions
from fedlora.crypto import (
    CodecParams,
    DealtKey,
    ciphertext_vector_digest,
    combine_partial_decryptions,
    decode,
    ed25519_public_bytes,
    encrypt_batch,
)
from fedlora.errors import ConfigError, CryptoError, ProtocolError, VerificationError
from fedlora.protocol import (
    PARTIAL_CHUNK,
    AggregationRule,
    DecryptionManifest,
    DecryptionTask,
    FedAvg,
    HolderPolicy,
    JoinExpectations,
    JoinInfo,
    ManifestEntry,
    PaillierSum,
    PlaintextSum,
    RecordSplitter,
    assemble_task,
    build_contribution,
    check_join,
    check_task,
    make_partial,
    pack_records,
    secure_sum_for,
    unpack_records,
    verify_partial,
)

FED = "protocol-test"
N = 300
WEIGHTS = {"bank-a": 2, "bank-b": 3, "hospital-c": 5}
GLOBAL = (0, hashlib.sha256(b"v0").digest())


@pytest.fixture(scope="module")
def signing() -> dict[str, Ed25519PrivateKey]:
    return {pid: Ed25519PrivateKey.generate() for pid in (*WEIGHTS, "hospital-d", "bank-e")}


@pytest.fixture(scope="module")
def codec() -> CodecParams:
    return CodecParams(clip=1.0, value_bits=16, max_total_weight=50, key_bits=512)


@pytest.fixture(scope="module")
def round1(dealt: DealtKey, codec: CodecParams, signing):  # type: ignore[no-untyped-def]
    """Three signed contributions, their sum, and a manifest as an honest coordinator builds it."""
    s = PaillierSum(dealt.public_key, codec, FedAvg())
    rng = np.random.default_rng(3)
    deltas = {pid: rng.normal(0, 0.7, N) for pid in WEIGHTS}
    sent = {
        pid: build_contribution(
            federation_id=FED,
            client_id=pid,
            round_number=1,
            global_version=GLOBAL[0],
            global_digest=GLOBAL[1],
            delta=deltas[pid],
            weight=WEIGHTS[pid],
            secure_sum=s,
            signing_key=signing[pid],
        )
        for pid in WEIGHTS
    }
    total = None
    for pid in sorted(sent):
        total = s.add(total, sent[pid].records, WEIGHTS[pid])
    assert total is not None
    key = dealt.public_key
    manifest = DecryptionManifest(
        federation_id=FED,
        round_number=1,
        value_count=N,
        codec=codec,
        key_fingerprint=key.fingerprint,
        aggregate_digest=ciphertext_vector_digest(key.paillier, unpack_records(total, s.width)),
        record_count=s.record_count(N),
        global_version=GLOBAL[0],
        global_digest=GLOBAL[1],
        entries=tuple(
            ManifestEntry(
                pid,
                c.header.weight,
                c.header.record_count,
                c.header.ciphertexts_digest,
                c.header.signature,
                c.header.knowledge_proof,
            )
            for pid, c in sorted(sent.items())
        ),
        ticket_signatures=(),
        # A log that holds round 1: the federation's two entries, round_opened, aggregated.
        checkpoint=SignedCheckpoint("log", 4, b"\x00" * 32, 0, b"\x00" * 64),
        aggregated_index=3,
    )
    task = DecryptionTask(manifest, {p: c.records for p, c in sent.items()}, total)
    return s, deltas, sent, task


def _policy(dealt: DealtKey, codec: CodecParams, signing, holder: str) -> HolderPolicy:  # type: ignore[no-untyped-def]
    return HolderPolicy(
        federation_id=FED,
        party_id=holder,
        key=dealt.public_key,
        codec=codec,
        peers={pid: ed25519_public_bytes(k) for pid, k in signing.items()},
        min_participants=3,
        ticket_quorum=4,
    )


def test_a_round_through_the_pure_protocol_decrypts_to_the_weighted_mean(
    dealt, codec, signing, round1
) -> None:
    _, deltas, _, task = round1
    holders = dealt.shares[:3]
    checked = [check_task(_policy(dealt, codec, signing, sh.party_id), task, 1) for sh in holders]
    assert len({c.ticket for c in checked}) == 1  # every holder derives the same ticket
    partials = []
    for share, c in zip(holders, checked):
        header, values = make_partial(
            _policy(dealt, codec, signing, share.party_id), share, signing[share.party_id], c
        )
        partials.append(
            verify_partial(
                federation_id=FED,
                key=dealt.public_key,
                party_id=share.party_id,
                signing_public_key=ed25519_public_bytes(signing[share.party_id]),
                header=header,
                values=values,
                ciphertexts=c.ciphertexts,
                chunk_digest=task.manifest.aggregate_digest,  # one chunk: the whole vector
                ticket=c.ticket,
            )
        )
    plain = combine_partial_decryptions(dealt.public_key, checked[0].ciphertexts, partials)
    mean = decode(plain, codec, length=N, total_weight=sum(WEIGHTS.values()))
    expected = sum(WEIGHTS[p] * np.clip(deltas[p], -1, 1) for p in WEIGHTS) / sum(WEIGHTS.values())
    assert np.max(np.abs(mean - expected)) <= codec.step


def test_a_streamed_task_is_assembled_however_it_is_cut_and_bounded_as_it_arrives(
    round1,
) -> None:
    _, _, _, task = round1
    m = task.manifest

    def cut(data: bytes, size: int) -> list[bytes]:
        return [data[i : i + size] for i in range(0, len(data), size)]

    parts = [(p, c) for p, data in sorted(task.contributions.items()) for c in cut(data, 7)]
    parts += [("", c) for c in cut(task.aggregate, 13)]
    assert assemble_task(m, parts) == task
    # A hostile stream: records of someone the manifest does not name, or more than it holds.
    with pytest.raises(VerificationError, match="'mallory', whom its manifest does not name"):
        assemble_task(m, [("mallory", b"x")])
    limit = m.record_count * ((2 * m.codec.key_bits + 7) // 8)
    with pytest.raises(VerificationError, match="more of the contribution of 'bank-a' than"):
        assemble_task(m, [("bank-a", b"\0" * limit), ("bank-a", b"\0")])
    with pytest.raises(VerificationError, match="more of the aggregate than"):
        assemble_task(m, iter([("", b"\0" * (limit + 1))]))


def test_a_holder_refuses_an_aggregate_that_is_not_the_product(
    dealt, codec, signing, round1
) -> None:
    s, _, _, task = round1
    other = pack_records(encrypt_batch(dealt.public_key.paillier, [7] * s.record_count(N)), s.width)
    with pytest.raises(VerificationError, match="not the product"):
        check_task(
            _policy(dealt, codec, signing, "bank-a"), dataclasses.replace(task, aggregate=other), 1
        )


def test_a_holder_refuses_records_their_sender_did_not_sign(dealt, codec, signing, round1) -> None:
    _, _, sent, task = round1
    swapped = dict(task.contributions, **{"bank-a": sent["bank-b"].records})
    with pytest.raises(VerificationError, match="'bank-a' is not signed by that peer's key"):
        check_task(
            _policy(dealt, codec, signing, "bank-b"),
            dataclasses.replace(task, contributions=swapped),
            1,
        )


def test_a_holder_refuses_a_task_relabelled_as_another_round(dealt, codec, signing, round1) -> None:
    _, _, _, task = round1
    relabelled = dataclasses.replace(
        task, manifest=dataclasses.replace(task.manifest, round_number=2)
    )
    with pytest.raises(
        VerificationError, match="the manifest is for round 2, but the task is round 1"
    ):
        check_task(_policy(dealt, codec, signing, "bank-a"), relabelled, 1)
    # A round 2 that the log cannot hold yet is refused on the log's size.
    with pytest.raises(VerificationError, match="round 2 runs ahead of the coordinator's audit"):
        check_task(_policy(dealt, codec, signing, "bank-a"), relabelled, 2)
    # Relabelled consistently, in a log long enough, the contributors' signatures (bound to
    # round 1) no longer verify.
    longer = dataclasses.replace(
        relabelled.manifest,
        checkpoint=dataclasses.replace(relabelled.manifest.checkpoint, tree_size=6),
        aggregated_index=5,
    )
    with pytest.raises(VerificationError, match="not signed by that peer's key"):
        check_task(
            _policy(dealt, codec, signing, "bank-a"),
            dataclasses.replace(relabelled, manifest=longer),
            2,
        )


def test_a_holder_refuses_a_model_other_than_the_one_it_trained_from(
    dealt, codec, signing, round1
) -> None:
    _, _, _, task = round1
    with pytest.raises(VerificationError, match="trained from another global model"):
        check_task(
            _policy(dealt, codec, signing, "bank-a"), task, 1, trained_from=(0, b"\x01" * 32)
        )


def test_a_holder_refuses_too_few_contributors(dealt, codec, signing, round1) -> None:
    _, _, _, task = round1
    policy = dataclasses.replace(_policy(dealt, codec, signing, "bank-a"), min_participants=4)
    with pytest.raises(VerificationError, match=r"policy\.min_participants requires 4"):
        check_task(policy, task, 1)


def test_the_coordinator_refuses_a_partial_signed_by_another_holder_or_out_of_bounds(
    dealt, codec, signing, round1
) -> None:
    _, _, _, task = round1
    share = dealt.shares[0]
    policy = _policy(dealt, codec, signing, share.party_id)
    checked = check_task(policy, task, 1)
    header, values = make_partial(policy, share, signing[share.party_id], checked)
    common = dict(
        federation_id=FED,
        key=dealt.public_key,
        party_id=share.party_id,
        values=values,
        ciphertexts=checked.ciphertexts,
        chunk_digest=task.manifest.aggregate_digest,
        ticket=checked.ticket,
    )
    other = ed25519_public_bytes(signing["bank-e"])
    with pytest.raises(VerificationError, match="signature does not verify"):
        verify_partial(signing_public_key=other, header=header, **common)  # type: ignore[arg-type]
    huge = dataclasses.replace(header, response=1 << 5000)
    with pytest.raises(VerificationError, match="above the public bound"):
        verify_partial(
            signing_public_key=ed25519_public_bytes(signing[share.party_id]),
            header=huge,
            **common,  # type: ignore[arg-type]
        )
    with pytest.raises(VerificationError, match="different ticket"):
        verify_partial(
            signing_public_key=ed25519_public_bytes(signing[share.party_id]),
            header=header,
            **{**common, "ticket": b"\x02" * 32},  # type: ignore[arg-type]
        )


class Median(AggregationRule):
    name = "median"

    def update(self, current, mean_delta):  # type: ignore[no-untyped-def]
        return current


def test_an_encrypted_federation_accepts_only_linear_rules(dealt, codec) -> None:
    with pytest.raises(ConfigError, match="'median' is not linear"):
        secure_sum_for("homomorphic", dealt.public_key, codec, Median())
    assert isinstance(secure_sum_for("none", None, codec, Median()), PlaintextSum)
    with pytest.raises(ConfigError, match="threshold_public_key is required"):
        secure_sum_for("homomorphic", None, codec)


def test_a_plaintext_sum_refuses_nan_and_any_proof(codec) -> None:
    s = PlaintextSum(codec, FedAvg())
    bad = np.array([1.0, np.nan], dtype="<f4").tobytes()
    with pytest.raises(VerificationError, match="NaN or infinite"):
        s.check_records(bad, 0)
    with pytest.raises(VerificationError, match="carries no proof"):
        s.check_proof(b"", b"\x01", b"")


@given(
    values=st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_records_round_trip_however_the_stream_is_cut(values, cuts) -> None:
    data = pack_records(values, 8)
    assert unpack_records(data, 8) == values
    splitter, out, start = RecordSplitter(8), [], 0
    for cut in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
        first, whole = splitter.feed(data[start:cut])
        assert first == len(out)
        out += unpack_records(whole, 8)
        start = cut
    assert out == values and splitter.pending == 0


def test_records_refuse_ragged_data_and_values_that_do_not_fit() -> None:
    with pytest.raises(VerificationError, match="must be a multiple of 8 bytes long, got 9"):
        unpack_records(b"\x00" * 9, 8)
    with pytest.raises(CryptoError, match=r"record\[0\] does not fit in 2 bytes"):
        pack_records([1 << 16], 2)


def _join_info(dealt: DealtKey, base_codec: CodecParams, **changes) -> JoinInfo:  # type: ignore[no-untyped-def]
    info = JoinInfo(
        federation_id=FED,
        role="bank",
        key_fingerprint=dealt.public_key.fingerprint,
        codec=base_codec,
        encryption_type="homomorphic",
        aggregation_frequency=1,
        participant_threshold=3,
        decryption_threshold=3,
        rounds=1,
        num_parameters=N,
        coordinator_signing_key=b"\x07" * 32,
        chunk_bytes=1 << 20,
        max_weight=10,
        ticket_quorum=4,
        min_clients=3,
        partial_chunk=PARTIAL_CHUNK,
    )
    return dataclasses.replace(info, **changes)


def _expect(**policy) -> JoinExpectations:  # type: ignore[no-untyped-def]
    return JoinExpectations(
        federation_id=FED,
        coordinator_key=b"\x07" * 32,
        policy=ClientPolicy(**policy),
        testing=TestingOptions(insecure_small_keys=True),
        num_parameters=N,
    )


def test_joining_accepts_only_the_pinned_federation_keys_and_safe_quorums(dealt, codec) -> None:
    key = dealt.public_key
    joined = check_join(_join_info(dealt, codec), _expect(), key)
    assert (joined.min_participants, joined.ticket_quorum) == (3, 4)  # ⌈(5 + 3)/2⌉
    lies = [
        (dict(federation_id="other"), ProtocolError, "serves federation 'other'"),
        (dict(coordinator_signing_key=b"\x08" * 32), VerificationError, "signing key differs"),
        (dict(key_fingerprint=b"\x00" * 32), VerificationError, "different threshold key"),
        (dict(encryption_type="none"), VerificationError, "announces encryption_type 'none'"),
        (
            dict(codec=dataclasses.replace(codec, key_bits=2048)),
            VerificationError,
            "codec for 2048-bit keys",
        ),
        (dict(num_parameters=N + 1), ConfigError, f"has {N + 1} parameters"),
        (
            dict(partial_chunk=PARTIAL_CHUNK // 2),
            VerificationError,
            f"chunks of {PARTIAL_CHUNK // 2} ciphertexts, this client's fedlora sends chunks of",
        ),
    ]
    for changes, error, message in lies:
        with pytest.raises(error, match=message):
            check_join(_join_info(dealt, codec, **changes), _expect(), key)
    with pytest.raises(ConfigError, match=r"ticket_quorum: 3 is outside 4\.\.5"):
        check_join(_join_info(dealt, codec), _expect(ticket_quorum=3), key)
    with pytest.raises(ConfigError, match="refuses keys below 2048"):
        check_join(
            _join_info(dealt, codec),
            dataclasses.replace(_expect(), testing=TestingOptions()),
            key,
        )
    # A coordinator announcing a lower participant threshold cannot lower a pinned minimum.
    assert (
        check_join(
            _join_info(dealt, codec, participant_threshold=2), _expect(min_participants=4), key
        ).min_participants
        == 4
    )


def test_joining_refuses_a_federation_spec_that_differs_naming_each_setting(dealt, codec) -> None:
    from fedlora.protocol import canonical_spec

    ours = {"model.lora.seed": 0, "data.features": ["f0", "f1"], "model.num_parameters": N}
    expect = dataclasses.replace(_expect(), spec=ours, client_id="bank-a")
    same = _join_info(dealt, codec, spec_json=canonical_spec(ours))
    assert check_join(same, expect, dealt.public_key).info is same
    # A coordinator that announces another seed and another column order is refused, both named.
    theirs = {**ours, "model.lora.seed": 3, "data.features": ["f1", "f0"]}
    with pytest.raises(
        ConfigError,
        match=r"bank-a's model does not match the federation's: data\.features is "
        r'\["f0", "f1"\] here, \["f1", "f0"\] in the federation; model\.lora\.seed is 0 here, '
        r"3 in the federation",
    ):
        check_join(
            _join_info(dealt, codec, spec_json=canonical_spec(theirs)), expect, dealt.public_key
        )


def test_a_hostile_spec_is_refused_as_a_config_error_never_a_crash() -> None:
    import json

    from fedlora.protocol import check_spec, parse_spec

    for text in ("[" * 5000 + "]" * 5000, "1" * 5000, '{"a": {"b": 1}}', "[]", "{"):
        with pytest.raises(ConfigError):
            parse_spec(text, "the client's spec")
    many = {f"k{i}": i for i in range(65)}
    with pytest.raises(ConfigError, match="at most 64 settings"):
        parse_spec(json.dumps(many), "spec")
    # A refusal names at most five settings, however many differ.
    ours = {f"k{i}": i for i in range(40)}
    with pytest.raises(ConfigError, match=r"; and 35 more \(") as caught:
        check_spec({}, ours, "mallory")
    assert len(str(caught.value)) < 1000
