"""Shared fixtures: small (512-bit) keys built once per session (STYLE.md §3)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from fedlora.crypto import DealtKey, deal_threshold_key, generate_safe_prime, keypair_from_primes

VECTORS = Path(__file__).parent / "vectors"

settings.register_profile(
    "fedlora", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("fedlora")

PARTIES = ("bank-a", "bank-b", "hospital-c", "hospital-d", "bank-e")


def load_vectors(name: str) -> dict:
    return json.loads((VECTORS / f"{name}.json").read_text())


@pytest.fixture(scope="session")
def safe_primes() -> tuple[int, int]:
    rng = random.Random(1)
    return generate_safe_prime(256, rng=rng), generate_safe_prime(256, rng=rng)


@pytest.fixture(scope="session")
def dealt(safe_primes: tuple[int, int]) -> DealtKey:
    """A 3-of-5 threshold key over a 512-bit modulus."""
    p, q = safe_primes
    return deal_threshold_key(p, q, 3, PARTIES, rng=random.Random(2))


@pytest.fixture(scope="session")
def keypair(safe_primes: tuple[int, int]):
    return keypair_from_primes(*safe_primes)
