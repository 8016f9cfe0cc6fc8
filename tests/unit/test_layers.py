"""Layer contracts (DESIGN.md §1, STYLE.md §17): who may import whom, read from the source.

errors ← crypto ← {audit, config} ← {coordinator, client} ← gRPC adapters ← cli/demo. Each rule
below holds today and fails the build the day a change breaks it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fedlora

SRC = Path(fedlora.__file__).parent
HEAVY = ("torch", "peft", "transformers")
GRPC = ("grpc", "grpc_health", "grpc_reflection", "fedlora.v1")


def _modules() -> dict[str, set[str]]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        if "v1" in rel.parts:
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        out[".".join(rel.parts).removesuffix(".__init__")] = names
    return out


MODULES = _modules()


def _uses(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("module", [m for m in MODULES if _in(m, "fedlora.crypto")])
def test_crypto_is_pure(module) -> None:
    allowed = ("fedlora.crypto", "fedlora.errors")
    outside = [n for n in MODULES[module] if n.startswith("fedlora") and not _uses({n}, allowed)]
    assert not outside and not _uses(MODULES[module], HEAVY + GRPC), module


@pytest.mark.parametrize(
    "module", ["fedlora.errors", "fedlora.config", "fedlora.audit", "fedlora.certs"]
)
def test_the_foundation_imports_no_role_transport_or_torch(module) -> None:
    roles = ("fedlora.client", "fedlora.coordinator")
    assert not _uses(MODULES[module], HEAVY + GRPC + roles), module


def test_client_and_coordinator_never_import_each_other() -> None:
    for module, names in MODULES.items():
        if _in(module, "fedlora.client"):
            assert not _uses(names, ("fedlora.coordinator",)), module
        if _in(module, "fedlora.coordinator"):
            assert not _uses(names, ("fedlora.client",)), module


def test_the_coordinator_engine_knows_no_grpc() -> None:
    adapters = {
        "fedlora.coordinator._server",
        "fedlora.coordinator._servicer",
        "fedlora.coordinator",
    }
    for module, names in MODULES.items():
        if _in(module, "fedlora.coordinator") and module not in adapters:
            assert not _uses(names, GRPC + HEAVY), module


def test_torch_stays_in_client_training() -> None:
    # The application helpers that build models for the demo and `fedlora model` are the two
    # exceptions the restructuring issue moves under client/training.
    allowed = {
        "fedlora.client._lora",
        "fedlora.client._training",
        "fedlora._setup",
        "fedlora._model_cli",
    }
    users = {m for m, names in MODULES.items() if _uses(names, HEAVY)}
    assert users <= allowed, sorted(users - allowed)
