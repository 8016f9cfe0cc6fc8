from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.crypto import ShamirShare, integer_lagrange_at_zero, recover_secret, split_secret
from fedlora.crypto._shamir import evaluate_polynomial
from fedlora.errors import CryptoError
from tests.conftest import load_vectors

PRIME = 2**127 - 1


def test_known_answer_vector() -> None:
    vec = load_vectors("shamir")
    shares = [ShamirShare(x, y) for x, y in vec["shares"]]
    for x, y in vec["shares"]:
        assert evaluate_polynomial(vec["coefficients"], x, vec["prime"]) == y
    for subset in itertools.combinations(shares, vec["threshold"]):
        assert recover_secret(list(subset), vec["prime"]) == vec["secret"]


@given(
    secret=st.integers(0, PRIME - 1),
    threshold=st.integers(1, 6),
    extra=st.integers(0, 3),
    seed=st.integers(0, 2**32),
)
def test_any_t_shares_recover_and_t_minus_one_do_not(secret, threshold, extra, seed) -> None:
    parties = threshold + extra
    shares = split_secret(secret, threshold, parties, PRIME, rng=random.Random(seed))
    picked = random.Random(seed).sample(shares, threshold)
    assert recover_secret(picked, PRIME) == secret
    if threshold > 1:
        # t-1 shares interpolate a different polynomial; equality would happen with prob. 1/p.
        assert recover_secret(picked[:-1], PRIME) != secret


def test_bad_inputs_are_named() -> None:
    with pytest.raises(CryptoError, match="prime must be prime"):
        split_secret(1, 2, 3, 1000)
    with pytest.raises(CryptoError, match="secret"):
        split_secret(PRIME, 2, 3, PRIME)
    with pytest.raises(CryptoError, match="threshold"):
        split_secret(1, 4, 3, PRIME)
    with pytest.raises(CryptoError, match="duplicate share index 2"):
        recover_secret([ShamirShare(2, 5), ShamirShare(2, 5)], PRIME)
    with pytest.raises(CryptoError, match="at least one"):
        recover_secret([], PRIME)


def test_integer_lagrange_coefficients_interpolate_delta_times_f0() -> None:
    coefficients = [123456789, 987654321, 55555]
    for xs in itertools.combinations(range(1, 7), 3):
        lam = integer_lagrange_at_zero(xs, 6)
        assert all(isinstance(v, int) for v in lam.values())
        assert (
            sum(lam[i] * evaluate_polynomial(coefficients, i, 10**40) for i in xs)
            == 720 * coefficients[0]
        )
    with pytest.raises(CryptoError, match="duplicate"):
        integer_lagrange_at_zero([1, 1, 2], 5)
    with pytest.raises(CryptoError, match="share index"):
        integer_lagrange_at_zero([0, 1], 5)
