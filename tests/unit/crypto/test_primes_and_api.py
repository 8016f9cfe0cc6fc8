from __future__ import annotations

import ast
import random
import time
from pathlib import Path

import gmpy2
import pytest

import fedlora.crypto as crypto
from fedlora.crypto import generate_safe_prime, generate_safe_prime_pair, is_safe_prime
from fedlora.errors import CryptoError

CRYPTO_DIR = Path(crypto.__file__).parent


def test_safe_primes_have_the_requested_shape() -> None:
    rng = random.Random(3)
    for bits in (32, 64, 256):
        p = generate_safe_prime(bits, rng=rng)
        assert p.bit_length() == bits and p >> (bits - 2) == 0b11
        assert gmpy2.is_prime(p) and gmpy2.is_prime((p - 1) // 2)
        assert is_safe_prime(p)
    assert not is_safe_prime(13)  # 6 is not prime
    assert is_safe_prime(23)


def test_seeded_generation_is_reproducible() -> None:
    assert generate_safe_prime(128, rng=random.Random(9)) == generate_safe_prime(
        128, rng=random.Random(9)
    )


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(CryptoError, match="bits"):
        generate_safe_prime(8)
    with pytest.raises(CryptoError, match="bits"):
        generate_safe_prime(True)  # type: ignore[arg-type]


def test_parallel_pair_is_distinct() -> None:
    p, q = generate_safe_prime_pair(256, workers=2)
    assert p != q and is_safe_prime(p) and is_safe_prime(q)


@pytest.mark.slow
def test_2048_bit_modulus_primes_within_a_minute() -> None:
    start = time.monotonic()
    p, q = generate_safe_prime_pair(1024)
    elapsed = time.monotonic() - start
    assert (p * q).bit_length() == 2048
    assert elapsed < 60, f"safe-prime pair took {elapsed:.1f}s"


def test_public_api_is_explicit() -> None:
    for name in crypto.__all__:
        assert hasattr(crypto, name), name
    public_modules = [p.name for p in CRYPTO_DIR.glob("*.py") if not p.name.startswith("_")]
    assert public_modules == [], "crypto internals live in _private modules"


FORBIDDEN = {
    "grpc",
    "torch",
    "logging",
    "yaml",
    "os.environ",
    "fedlora.client",
    "fedlora.coordinator",
    "peft",
}


@pytest.mark.parametrize("path", sorted(CRYPTO_DIR.glob("*.py")), ids=lambda p: p.name)
def test_crypto_is_pure(path: Path) -> None:
    # No I/O, logging, config, grpc or torch in crypto (STYLE.md §2).
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in {"open", "print", "input"}, (
                f"{path.name} calls {node.func.id}()"
            )
            continue
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert f"{node.value.id}.{node.attr}" not in FORBIDDEN, (
                f"{path.name} uses {node.value.id}.{node.attr}"
            )
            continue
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN and name not in FORBIDDEN, (
                f"{path.name} imports {name}"
            )
