"""The modexp backend seam and the fixed-width ciphertext vector (issue 8, item 4)."""

from __future__ import annotations

import copy
import hashlib
import pickle
import random
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.crypto import (
    CiphertextVector,
    ModexpBackend,
    ObfuscatorPool,
    ThreadsBackend,
    add_ciphertext_vectors,
    ciphertext_vector_digest,
    ciphertext_width,
    combine_partial_decryptions,
    decrypt_batch,
    default_backend,
    encrypt_and_prove,
    encrypt_batch,
    partial_decrypt,
    records_hasher,
    validate_ciphertexts,
    verify_partial_decryption,
)
from fedlora.errors import CryptoError, VerificationError

# Around the 16-values-per-thread chunk floor, and the empty and one-element edges.
SIZES = (0, 1, 2, 15, 16, 17, 31, 32, 33, 64, 100)


class CountingBackend:
    """Delegates to a ThreadsBackend and records every call, to prove the argument is used."""

    name = "counting"

    def __init__(self) -> None:
        self.inner = ThreadsBackend(2)
        self.calls: Counter[str] = Counter()
        self.values: Counter[str] = Counter()

    def powmod_bases(self, bases: Sequence[int], exponent: int, modulus: int) -> list[int]:
        self.calls["powmod_bases"] += 1
        self.values["powmod_bases"] += len(bases)
        return self.inner.powmod_bases(bases, exponent, modulus)

    def powmod_exponents(self, base: int, exponents: Sequence[int], modulus: int) -> list[int]:
        self.calls["powmod_exponents"] += 1
        self.values["powmod_exponents"] += len(exponents)
        return self.inner.powmod_exponents(base, exponents, modulus)

    def powmod_bases_secret(self, bases: Sequence[int], exponent: int, modulus: int) -> list[int]:
        self.calls["powmod_bases_secret"] += 1
        self.values["powmod_bases_secret"] += len(bases)
        return self.inner.powmod_bases_secret(bases, exponent, modulus)

    def multi_powmods(self, jobs, modulus):  # type: ignore[no-untyped-def]
        self.calls["multi_powmods"] += 1
        self.values["multi_powmods"] += sum(len(b) for b, _ in jobs)
        return self.inner.multi_powmods(jobs, modulus)


# --- ThreadsBackend ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("workers", [1, 3, 8])
def test_threads_backend_equals_pow(size, workers) -> None:
    # Arrange
    rng = random.Random(size * 100 + workers)
    modulus = rng.getrandbits(300) | 1
    bases = [rng.randrange(modulus) for _ in range(size)]
    exponents = [rng.getrandbits(200) for _ in range(size)]
    exponent, base = rng.getrandbits(256), rng.randrange(modulus)
    backend: ModexpBackend = ThreadsBackend(workers)
    # Act
    by_bases = backend.powmod_bases(bases, exponent, modulus)
    by_secret = backend.powmod_bases_secret(bases, exponent, modulus)
    by_exponents = backend.powmod_exponents(base, exponents, modulus)
    # Assert
    assert by_bases == by_secret == [pow(b, exponent, modulus) for b in bases]
    assert by_exponents == [pow(base, e, modulus) for e in exponents]
    assert all(type(x) is int for x in by_bases + by_exponents)


@given(
    st.lists(st.integers(min_value=0, max_value=2**130), max_size=70),
    st.integers(min_value=0, max_value=2**70),
    st.integers(min_value=1, max_value=2**128),
)
def test_one_worker_and_many_give_identical_results(bases, exponent, modulus) -> None:
    one, many = ThreadsBackend(1), ThreadsBackend(5)
    assert one.powmod_bases(bases, exponent, modulus) == many.powmod_bases(bases, exponent, modulus)
    assert one.powmod_exponents(exponent, bases, modulus) == many.powmod_exponents(
        exponent, bases, modulus
    )


def test_negative_exponents_invert_and_refuse_non_units() -> None:
    # Arrange
    modulus = 101 * 103
    backend = ThreadsBackend(4)
    units = [b for b in range(2, 200) if b % 101 and b % 103]
    # Act / Assert
    assert backend.powmod_bases(units, -5, modulus) == [pow(b, -5, modulus) for b in units]
    assert backend.powmod_exponents(7, [-3, 0, 3], modulus) == [
        pow(7, e, modulus) for e in (-3, 0, 3)
    ]
    # gmpy2 alone would abort the interpreter here; the backend raises instead.
    with pytest.raises(CryptoError, match=r"base\[2\] is not invertible"):
        backend.powmod_bases([2, 3, 101], -1, modulus)
    with pytest.raises(CryptoError, match="not invertible"):
        backend.powmod_exponents(103, [1, -1], modulus)


@pytest.mark.parametrize("workers", [0, -1, True, 1.5, "2"])
def test_bad_worker_counts_and_moduli_are_refused(workers) -> None:
    with pytest.raises(CryptoError, match="workers"):
        ThreadsBackend(workers)
    with pytest.raises(CryptoError, match="modulus"):
        ThreadsBackend(1).powmod_bases([2], 3, 0)
    with pytest.raises(CryptoError, match="exponent"):
        ThreadsBackend(1).powmod_bases([2], 1.5, 7)  # type: ignore[arg-type]


def test_default_backend_is_one_shared_backend_the_fastest_that_works_here() -> None:
    from fedlora.crypto._ifma import load_kernel
    from fedlora.crypto._openssl import load_libcrypto

    assert default_backend() is default_backend()
    expected = (
        "ifma"
        if load_kernel() is not None
        else "openssl"
        if load_libcrypto() is not None
        else "gmpy2-threads"
    )
    assert default_backend().name == expected
    assert isinstance(default_backend(), ThreadsBackend) and default_backend().workers >= 1


# --- OpenSSL ------------------------------------------------------------------------------------

needs_libcrypto = pytest.mark.skipif(
    __import__("fedlora.crypto._openssl", fromlist=["x"]).load_libcrypto() is None,
    reason="no libcrypto on this machine",
)


@needs_libcrypto
@pytest.mark.parametrize("bits", [3, 64, 521, 2048, 4096])
@pytest.mark.parametrize("workers", [1, 3])
def test_openssl_backend_equals_gmpy2_on_random_inputs(bits, workers) -> None:
    # Arrange: odd moduli (Montgomery), bases beyond the modulus and edge values included.
    from fedlora.crypto import OpenSSLBackend

    rng = random.Random(bits * 10 + workers)
    modulus = rng.getrandbits(bits) | 1 | (1 << (bits - 1))
    bases = [rng.getrandbits(bits + 16) for _ in range(40)] + [0, 1, modulus - 1, modulus]
    exponent = rng.getrandbits(bits + 60)
    exponents = [rng.getrandbits(bits) for _ in range(30)] + [0, 1]
    backend, reference = OpenSSLBackend(workers), ThreadsBackend(1)
    # Act / Assert
    expected = reference.powmod_bases(bases, exponent, modulus)
    assert backend.powmod_bases(bases, exponent, modulus) == expected
    assert backend.powmod_bases_secret(bases, exponent, modulus) == expected
    assert backend.powmod_exponents(bases[0], exponents, modulus) == reference.powmod_exponents(
        bases[0], exponents, modulus
    )
    assert all(type(x) is int for x in expected)


@needs_libcrypto
@given(
    st.lists(st.integers(min_value=0, max_value=2**300), max_size=40),
    st.integers(min_value=0, max_value=2**200),
    st.integers(min_value=1, max_value=2**256),
)
def test_openssl_backend_equals_gmpy2_for_any_modulus_even_or_one(bases, exponent, modulus) -> None:
    from fedlora.crypto import OpenSSLBackend

    backend, reference = OpenSSLBackend(2), ThreadsBackend(1)
    assert backend.powmod_bases_secret(bases, exponent, modulus) == reference.powmod_bases(
        bases, exponent, modulus
    )
    assert backend.powmod_exponents(exponent, bases, modulus) == reference.powmod_exponents(
        exponent, bases, modulus
    )


@needs_libcrypto
def test_openssl_backend_inverts_negative_exponents_and_refuses_non_units() -> None:
    from fedlora.crypto import OpenSSLBackend

    modulus, backend = 101 * 103, OpenSSLBackend(2)
    units = [b for b in range(2, 200) if b % 101 and b % 103]
    assert backend.powmod_bases(units, -5, modulus) == [pow(b, -5, modulus) for b in units]
    assert backend.powmod_exponents(7, [-3, 0, 3], modulus) == [
        pow(7, e, modulus) for e in (-3, 0, 3)
    ]
    with pytest.raises(CryptoError, match=r"base\[2\] is not invertible"):
        backend.powmod_bases([2, 3, 101], -1, modulus)
    with pytest.raises(CryptoError, match="modulus"):
        backend.powmod_bases([2], 3, 0)


@needs_libcrypto
def test_secret_exponentiations_run_openssls_constant_time_code_and_public_ones_do_not() -> None:
    # Arrange: count the calls into libcrypto's two exponentiation functions.
    from fedlora.crypto import OpenSSLBackend
    from fedlora.crypto._openssl import _LibCrypto, load_libcrypto

    loaded = load_libcrypto()
    assert loaded is not None
    lib = _LibCrypto(loaded.lib)
    calls = {"BN_mod_exp_mont": 0, "BN_mod_exp_mont_consttime": 0}
    for name in calls:
        real = getattr(lib, name)

        def counting(*args, _real=real, _name=name):  # type: ignore[no-untyped-def]
            calls[_name] += 1
            return _real(*args)

        setattr(lib, name, counting)
    backend = OpenSSLBackend(1, lib)
    modulus = (1 << 127) - 1
    # Act / Assert
    backend.powmod_bases_secret([2, 3, 4], 12345, modulus)
    assert calls == {"BN_mod_exp_mont": 0, "BN_mod_exp_mont_consttime": 3}
    backend.powmod_bases([2, 3], 12345, modulus)
    backend.powmod_exponents(2, [5, 6], modulus)
    assert calls == {"BN_mod_exp_mont": 4, "BN_mod_exp_mont_consttime": 3}


def test_backend_choice_auto_openssl_gmpy2_and_the_fallback(monkeypatch) -> None:
    from fedlora.crypto import _ifma, _openssl, make_backend

    threads, line = make_backend("gmpy2", workers=1)
    assert threads.name == "gmpy2-threads" and "not constant-time" in line
    with pytest.raises(CryptoError, match="one of auto, ifma, openssl, gmpy2"):
        make_backend("gpu")
    # No IFMA kernel: auto takes OpenSSL where there is one; ifma is refused with the fix.
    monkeypatch.setattr(_ifma, "load_kernel", lambda: None)
    with pytest.raises(CryptoError, match=r"kernel is not available here .* choose backend auto"):
        make_backend("ifma")
    if _openssl.load_libcrypto() is not None:
        assert make_backend("auto")[0].name == "openssl"
    # No libcrypto either: auto falls back to gmpy2 and says so in one line; openssl is refused.
    monkeypatch.setattr(_openssl, "load_libcrypto", lambda: None)
    backend, line = make_backend("auto")
    assert backend.name == "gmpy2-threads" and "no working OpenSSL libcrypto" in line
    with pytest.raises(
        CryptoError, match=r"install OpenSSL's libcrypto .* or choose backend gmpy2"
    ):
        make_backend("openssl")


@needs_libcrypto
def test_a_libcrypto_that_computes_wrong_answers_is_not_used(monkeypatch) -> None:
    from fedlora.crypto import _ifma, make_backend
    from fedlora.crypto._openssl import OpenSSLBackend

    monkeypatch.setattr(_ifma, "load_kernel", lambda: None)
    monkeypatch.setattr(OpenSSLBackend, "powmod_bases", lambda self, b, e, m: [1] * len(b))
    assert make_backend("auto")[0].name == "gmpy2-threads"
    with pytest.raises(CryptoError, match="no working libcrypto"):
        make_backend("openssl")


# --- the AVX-512 IFMA multi-buffer kernel ---------------------------------------------------------

needs_ifma = pytest.mark.skipif(
    __import__("fedlora.crypto._ifma", fromlist=["x"]).load_kernel() is None,
    reason="the IFMA kernel is not built here, or this CPU does not run AVX-512 IFMA",
)


@needs_ifma
@pytest.mark.parametrize("bits", [3, 64, 104, 105, 521, 1024, 2048, 4096, 6144, 8190])
@pytest.mark.parametrize("workers", [1, 3])
def test_ifma_backend_equals_gmpy2_on_random_inputs(bits, workers) -> None:
    # Arrange: odd moduli at and around limb boundaries (52 bits), bases beyond the modulus,
    # edge values, batch sizes that fill and do not fill the eight lanes.
    from fedlora.crypto import IfmaBackend

    rng = random.Random(bits * 10 + workers)
    backend, reference = IfmaBackend(workers, ThreadsBackend(1)), ThreadsBackend(1)
    big = bits > 2048  # fewer cases where each exponentiation costs milliseconds
    for count in (4, 9) if big else (4, 8, 9, 23):
        modulus = rng.getrandbits(bits) | 1 | (1 << (bits - 1))
        bases = [rng.getrandbits(bits + 16) for _ in range(count)] + [0, 1, modulus - 1, modulus]
        exponents = [0, 1, 2, rng.getrandbits(61), rng.getrandbits(bits + 60)]
        for exponent in exponents[-2:] if big else exponents:
            # Act / Assert
            expected = reference.powmod_bases(bases, exponent, modulus)
            assert backend.powmod_bases(bases, exponent, modulus) == expected, (count, exponent)
            assert backend.powmod_bases_secret(bases, exponent, modulus) == expected
    assert all(type(x) is int for x in expected)


@needs_ifma
@given(
    st.lists(st.integers(min_value=0, max_value=2**600), max_size=40),
    st.integers(min_value=-(2**64), max_value=2**700),
    st.integers(min_value=1, max_value=2**512),
)
def test_ifma_backend_equals_gmpy2_for_any_modulus_and_exponent(bases, exponent, modulus) -> None:
    from fedlora.crypto import IfmaBackend

    backend, reference = IfmaBackend(2), ThreadsBackend(1)
    try:
        expected = reference.powmod_bases(bases, exponent, modulus)
    except CryptoError as exc:  # a negative power of a non-unit: refused the same way
        with pytest.raises(CryptoError, match=str(exc).split(" is not")[0].replace("[", r"\[")):
            backend.powmod_bases_secret(bases, exponent, modulus)
        return
    assert backend.powmod_bases_secret(bases, exponent, modulus) == expected
    assert backend.powmod_bases(bases, exponent, modulus) == expected


@needs_ifma
def test_ifma_runs_the_kernel_for_batches_and_the_fallback_for_the_rest() -> None:
    # Arrange: a fallback that counts what reaches it.
    from fedlora.crypto import IfmaBackend

    fallback = CountingBackend()
    backend = IfmaBackend(2, fallback)
    odd, even = (1 << 127) - 1, 1 << 100
    # Act
    backend.powmod_bases_secret(list(range(2, 40)), 12345, odd)  # kernel
    backend.powmod_bases(list(range(2, 40)), 12345, odd)  # kernel
    backend.powmod_bases_secret([2, 3], 12345, odd)  # too few for the lanes
    backend.powmod_bases(list(range(2, 40)), 12345, even)  # no Montgomery form
    backend.powmod_exponents(3, [5, 6, 7, 8, 9], odd)  # one base, many exponents
    backend.powmod_bases(list(range(2, 40)), 3, (1 << 8400) + 1)  # wider than the kernel
    # Assert
    assert fallback.calls == {"powmod_bases_secret": 1, "powmod_bases": 2, "powmod_exponents": 1}


@needs_ifma
def test_the_ifma_kernel_refuses_inputs_that_do_not_fit() -> None:
    from fedlora.crypto._ifma import load_kernel

    kernel = load_kernel()
    assert kernel is not None
    modulus = ((1 << 127) - 1).to_bytes(16, "big")
    base = (5).to_bytes(16, "big")
    with pytest.raises(ValueError, match="odd"):
        kernel.powmod(base, 1, b"\x03", b"\x00" * 15 + b"\x02", base, 1, 3)
    with pytest.raises(ValueError, match="limbs"):
        kernel.powmod(base, 1, b"\x03", modulus, base, 1, 2)  # 104 bits < 127 + 2
    with pytest.raises(ValueError, match="limbs"):
        kernel.powmod(base, 1, b"\x03", modulus, base, 1, 161)
    with pytest.raises(ValueError, match="wrong length"):
        kernel.powmod(base, 2, b"\x03", modulus, base, 1, 3)
    with pytest.raises(ValueError, match="k0"):
        kernel.powmod(base, 1, b"\x03", modulus, base, 1 << 52, 3)


@needs_ifma
@pytest.mark.parametrize("bits", [3, 104, 105, 521, 2048, 4096, 8190])
def test_the_ifma_multi_exponentiation_equals_gmpy2s_bucket_method(bits) -> None:
    # Arrange: the kernel itself (under the backend's size floor), counts that fill and do not
    # fill the eight lanes, bases beyond the modulus, 0 and 1, zero digits, exponent widths.
    from fedlora.crypto._backend import pippenger
    from fedlora.crypto._ifma import _Modulus, load_kernel

    kernel = load_kernel()
    assert kernel is not None
    rng = random.Random(bits)
    modulus = rng.getrandbits(bits) | 1 | (1 << (bits - 1))
    ctx = _Modulus(modulus)
    for count in (1, 7, 8, 9, 17, 300):
        for width in (1, 16, 33):
            bases = [rng.getrandbits(bits) % modulus for _ in range(count)]
            bases[0] = 0 if count > 8 else bases[0]
            bases[-1] = 1 if count > 1 else bases[-1]
            exps = [rng.getrandbits(8 * width).to_bytes(width, "big") for _ in range(count)]
            exps[count // 2] = bytes(width)  # an all-zero exponent
            # Act
            out = kernel.multiexp(
                b"".join(b.to_bytes(ctx.width, "big") for b in bases),
                count,
                b"".join(exps),
                ctx.modulus,
                ctx.rr,
                ctx.k0,
                ctx.limbs,
            )
            lanes = [
                int.from_bytes(out[i : i + ctx.width], "big") for i in range(0, len(out), ctx.width)
            ]
            product = 1
            for lane in lanes:
                product = product * lane % modulus
            # Assert
            assert len(lanes) == 8 and all(x <= modulus for x in lanes)
            assert product == pippenger(bases, exps, modulus), (count, width)
    with pytest.raises(ValueError, match="wrong length"):
        kernel.multiexp(
            b"\x01" * 2 * ctx.width, 2, b"\x01\x02\x03", ctx.modulus, ctx.rr, ctx.k0, ctx.limbs
        )
    with pytest.raises(ValueError, match="odd"):
        even = (2).to_bytes(ctx.width, "big")
        kernel.multiexp(even, 1, b"\x01", even, even, 1, ctx.limbs)


@needs_ifma
@pytest.mark.parametrize("workers", [1, 3])
def test_the_ifma_backend_batches_multi_exponentiations_across_jobs(workers) -> None:
    # Arrange: jobs above and below the kernel's floor, one split into pieces across workers,
    # an even modulus (gmpy2's method), bases beyond the modulus; against gmpy2 on one thread.
    from fedlora.crypto import IfmaBackend, multi_powmods
    from fedlora.crypto._ifma import MIN_MULTI

    rng = random.Random(workers)
    backend, reference = IfmaBackend(workers, ThreadsBackend(1)), ThreadsBackend(1)
    modulus = rng.getrandbits(2048) | 1 | (1 << 2047)
    sizes = (MIN_MULTI - 1, MIN_MULTI, 2 * MIN_MULTI + 5, 3)
    jobs = []
    for size in sizes:
        bases = [rng.getrandbits(2060) for _ in range(size)]
        jobs.append((bases, [rng.getrandbits(128).to_bytes(16, "big") for _ in range(size)]))
    # Act / Assert
    expected = reference.multi_powmods(jobs, modulus)
    assert multi_powmods(jobs, modulus, backend) == expected
    assert backend.multi_powmods(jobs[:1], modulus + 1) == reference.multi_powmods(
        jobs[:1], modulus + 1
    )
    with pytest.raises(ValueError, match="differ in length"):
        multi_powmods([([1, 2], [b"\x01"])], modulus, backend)
    with pytest.raises(ValueError, match="differ in width"):
        multi_powmods([([1, 2], [b"\x01", b"\x01\x02"])], modulus, backend)


def test_the_ifma_backend_says_why_it_cannot_run(monkeypatch) -> None:
    from fedlora.crypto import IfmaBackend, _ifma

    monkeypatch.setattr(_ifma, "load_kernel", lambda: None)
    with pytest.raises(CryptoError, match="IFMA kernel is not available"):
        IfmaBackend(1)


@needs_ifma
def test_a_kernel_that_computes_wrong_answers_is_not_used(monkeypatch) -> None:
    from fedlora.crypto import IfmaBackend, make_backend

    monkeypatch.setattr(IfmaBackend, "_bases", lambda self, b, e, m, secret: [1] * len(b))
    assert make_backend("auto")[0].name in ("openssl", "gmpy2-threads")
    with pytest.raises(CryptoError, match="kernel is not available here"):
        make_backend("ifma")


# --- backends are passed in and used ------------------------------------------------------------


def test_paillier_batches_run_on_the_backend_given(keypair) -> None:
    # Arrange
    public, private = keypair
    backend = CountingBackend()
    messages = list(range(20))
    # Act
    cts = encrypt_batch(public, messages, backend=backend)
    plain = decrypt_batch(private, cts, backend=backend)
    # Assert
    assert plain == messages
    # rⁿ for each ciphertext, then c^(p-1) and c^(q-1): all with a secret operand.
    assert backend.calls == Counter(powmod_bases_secret=3)
    assert backend.values["powmod_bases_secret"] == 3 * len(messages)


def test_threshold_decryption_routes_secret_and_public_work(dealt) -> None:
    # Arrange
    key = dealt.public_key
    messages = [3, 1, 4, 1, 5]
    cts = encrypt_batch(key.paillier, messages)
    backend = CountingBackend()
    # Act
    partials = [partial_decrypt(key, s, cts, backend=backend) for s in dealt.shares[:3]]
    secret_calls = backend.calls.copy()
    plain = combine_partial_decryptions(key, cts, partials, backend=backend)
    # Assert
    assert plain == messages
    # Each party: one call for c^(2Δsᵢ), one for the proof's nonce; never the public method;
    # and one batch of two multi-exponentiations (the proof's combination of cts and values).
    assert secret_calls == Counter(powmod_bases_secret=6, multi_powmods=3)
    assert backend.values["powmod_bases_secret"] == 3 * (len(cts) + 2)
    # Combining raises public values to public Lagrange coefficients: one call per party.
    assert backend.calls["powmod_bases"] == key.threshold
    # ... after checking each party's proof on the backend.
    assert backend.calls["multi_powmods"] == 6
    assert backend.values["multi_powmods"] == 6 * 2 * len(cts)


def test_a_wrong_backend_is_caught_by_the_proof(dealt) -> None:
    # Arrange: a backend that answers one slot wrongly is used, and verification notices.
    class Lying(CountingBackend):
        def powmod_bases_secret(self, bases, exponent, modulus):  # type: ignore[no-untyped-def]
            out = super().powmod_bases_secret(bases, exponent, modulus)
            if len(bases) > 2:
                out[0] = out[0] * out[0] % modulus
            return out

    key = dealt.public_key
    cts = encrypt_batch(key.paillier, [1, 2, 3])
    # Act
    partial = partial_decrypt(key, dealt.shares[0], cts, backend=Lying())
    # Assert
    with pytest.raises(VerificationError, match="failed its proof"):
        verify_partial_decryption(key, cts, partial)


def test_obfuscator_pool_and_proofs_use_the_backend(keypair) -> None:
    # Arrange
    public, private = keypair
    backend = CountingBackend()
    # Act
    with ObfuscatorPool(public, capacity=1, backend=backend, batch=1) as pool:
        taken = pool.take(9)
    cts, _ = encrypt_and_prove(public, [7, 8], context=b"ctx", backend=backend)
    # Assert
    assert len(taken) == 9 and decrypt_batch(private, cts) == [7, 8]
    assert backend.calls["powmod_bases"] == 0
    assert backend.values["powmod_bases_secret"] >= 9 + 2 + 2


# --- CiphertextVector ---------------------------------------------------------------------------


@st.composite
def vectors(draw: st.DrawFn) -> tuple[list[int], int]:
    width = draw(st.integers(min_value=1, max_value=70))
    values = draw(st.lists(st.integers(min_value=0, max_value=256**width - 1), max_size=40))
    return values, width


@given(vectors())
def test_vector_is_exactly_the_wire_layout_and_round_trips(case) -> None:
    # Arrange
    values, width = case
    wire = b"".join(v.to_bytes(width, "big") for v in values)  # the layout before this type
    # Act
    vec = CiphertextVector.from_ints(values, width)
    back = CiphertextVector.from_bytes(wire, width)
    # Assert
    assert vec.to_bytes() == wire and back == vec and hash(back) == hash(vec)
    assert vec.to_ints() == values == list(vec) == [vec[i] for i in range(len(vec))]
    assert len(vec) == vec.count == len(values) and vec.width == width
    assert CiphertextVector.from_bytes(bytearray(wire), width) == vec
    assert CiphertextVector.from_bytes(memoryview(wire), width) == vec
    assert pickle.loads(pickle.dumps(vec)) == vec and copy.deepcopy(vec) == vec


@given(vectors(), st.integers(min_value=1, max_value=9))
def test_chunks_are_whole_records_that_stream_to_the_same_digest(case, records) -> None:
    # Arrange
    values, width = case
    vec = CiphertextVector.from_ints(values, width)
    hasher = records_hasher(len(values), width)
    # Act
    chunks = list(vec.chunks(records))
    for chunk in chunks:
        hasher.update(chunk)
    # Assert
    assert b"".join(chunks) == vec.to_bytes()
    assert all(len(c) % width == 0 and 0 < len(c) <= records * width for c in chunks)
    assert len(chunks) == -(-len(values) // records)
    assert hasher.digest() == vec.digest()


@given(vectors())
def test_limbs_le32_hold_the_same_integers(case) -> None:
    # Arrange
    values, width = case
    vec = CiphertextVector.from_ints(values, width)
    # Act
    limbs = vec.limbs_le32()
    # Assert
    words = -(-width // 4)
    assert limbs.shape == (len(values), words) and limbs.dtype == np.dtype("<u4")
    rebuilt = [sum(int(limb) << (32 * j) for j, limb in enumerate(row)) for row in limbs]
    assert rebuilt == values
    # Memory: each row is the record's bytes reversed (little-endian), zero-padded on top.
    raw = limbs.view(np.uint8)
    for row, value in zip(raw, values):
        assert row.tobytes() == value.to_bytes(4 * words, "little")
    assert CiphertextVector.from_limbs_le32(limbs, width) == vec


def test_from_limbs_refuses_wrong_shapes_and_overflow() -> None:
    limbs = CiphertextVector.from_ints([1, 2], 6).limbs_le32()  # two 32-bit words per value
    with pytest.raises(CryptoError, match=r"shape \(count, 3\), got uint32 of shape \(2, 2\)"):
        CiphertextVector.from_limbs_le32(limbs, 9)
    with pytest.raises(CryptoError, match="uint32"):
        CiphertextVector.from_limbs_le32(limbs.astype(np.int64), 6)
    too_big = limbs.copy()
    too_big[0, 1] = 1 << 16  # bit 48: beyond 6 bytes
    with pytest.raises(CryptoError, match="does not fit in 6 bytes"):
        CiphertextVector.from_limbs_le32(too_big, 6)


def test_as_array_is_a_read_only_view_of_the_buffer() -> None:
    # Arrange
    vec = CiphertextVector.from_ints([0x0102, 0xA0B0, 0xFFFF], 2)
    # Act
    array = vec.as_array()
    # Assert
    assert array.shape == (3, 2) and array.dtype == np.uint8
    assert array.tolist() == [[1, 2], [0xA0, 0xB0], [0xFF, 0xFF]]
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    assert base is vec.to_bytes()  # zero copy: the array's memory is the vector's bytes
    assert not array.flags.writeable
    with pytest.raises(ValueError):
        array[0, 0] = 9
    empty = CiphertextVector.from_ints([], 5)
    assert empty.as_array().shape == (0, 5) and empty.limbs_le32().shape == (0, 2)


def test_ragged_and_bad_input_is_refused() -> None:
    with pytest.raises(
        VerificationError,
        match=r"multiple of 4 bytes long, got 10 bytes \(2 records and 2 bytes over\)",
    ):
        CiphertextVector.from_bytes(b"\x00" * 10, 4)
    with pytest.raises(CryptoError, match=r"record\[1\] does not fit in 2 bytes"):
        CiphertextVector.from_ints([1, 1 << 16], 2)
    with pytest.raises(CryptoError, match=r"record\[0\] is negative"):
        CiphertextVector.from_ints([-1], 2)
    with pytest.raises(CryptoError, match=r"record\[2\] must be an integer, got bool"):
        CiphertextVector.from_ints([1, 2, True], 2)
    for junk in (None, "x", b"ab", 1.5, np.float64(2), [1.0]):
        with pytest.raises(CryptoError):
            CiphertextVector.from_ints(junk, 2)  # type: ignore[arg-type]
    for junk in (None, "ab", 1.5, np.float64(2), [1, 2]):
        with pytest.raises(CryptoError, match="data must be bytes"):
            CiphertextVector.from_bytes(junk, 2)  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="width"):
        CiphertextVector.from_bytes(b"", 0)
    with pytest.raises(CryptoError, match="records"):
        next(CiphertextVector.from_ints([1], 1).chunks(0))


def test_vector_is_immutable() -> None:
    vec = CiphertextVector.from_ints([1, 2], 1)
    with pytest.raises(AttributeError):
        vec._width = 2  # type: ignore[misc]
    with pytest.raises(IndexError):
        vec[2]
    assert vec[-1] == 2 and repr(vec) == "CiphertextVector(count=2, width=1)"


def test_digest_is_unchanged_and_accepts_the_vector(keypair) -> None:
    # Arrange
    public, _ = keypair
    cts = encrypt_batch(public, [5, 6, 7])
    width = ciphertext_width(public)
    # The definition the audit log and every signature relies on, spelled out independently.
    reference = hashlib.sha256(
        b"fedlora/ciphertexts/v1\x00"
        + len(cts).to_bytes(8, "big")
        + width.to_bytes(4, "big")
        + b"".join(c.to_bytes(width, "big") for c in cts)
    ).digest()
    vec = CiphertextVector.from_ints(cts, width)
    # Act / Assert
    assert ciphertext_vector_digest(public, cts) == reference
    assert ciphertext_vector_digest(public, vec) == reference == vec.digest()
    assert validate_ciphertexts(public, vec) == cts
    assert add_ciphertext_vectors(public, vec, cts) == add_ciphertext_vectors(public, cts, vec)
    with pytest.raises(CryptoError, match=f"{width + 1}-byte records"):
        ciphertext_vector_digest(public, CiphertextVector.from_ints(cts, width + 1))


def test_threshold_functions_accept_a_vector(dealt) -> None:
    # Arrange
    key = dealt.public_key
    cts = encrypt_batch(key.paillier, [9, 8, 7])
    vec = CiphertextVector.from_ints(cts, ciphertext_width(key.paillier))
    # Act
    partials = [partial_decrypt(key, s, vec) for s in dealt.shares[:3]]
    # Assert
    assert partials[0].ciphertexts_digest == ciphertext_vector_digest(key.paillier, cts)
    verify_partial_decryption(key, vec, partials[1])
    assert combine_partial_decryptions(key, vec, partials) == [9, 8, 7]
