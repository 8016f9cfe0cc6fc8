"""fedlora on Flower's Simulation Engine: 20 simulated clients (Ray, as Flower ships it), encrypted
end to end through the same engine and client as the standalone product.

Nothing is mocked: real Flower messages, real Paillier threshold keys, real proofs and audit log.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedlora.audit import read_log_files, verify_log
from fedlora.config import load_coordinator_config
from tests.integration import flower_apps as apps
from tests.integration.helpers import prepare_federation

NODES = 20
PARTIES = [(f"bank-{i:02d}", "bank") for i in range(NODES)]


@pytest.mark.slow
def test_twenty_simulated_clients_publish_the_weighted_mean_of_their_clipped_deltas(
    tmp_path,
) -> None:
    from flwr.simulation import run_simulation

    # Arrange: a 3-of-20 test key; every simulated node is one enrolled party.
    layout = prepare_federation(
        tmp_path,
        bits=512,
        parties=PARTIES,
        rounds=2,
        participant_threshold=10,
        decryption_threshold=3,
        insecure=True,
        model_kind="linear",
        min_clients=NODES,
    )
    result = tmp_path / "result.json"
    # Act: two rounds on the Simulation Engine.
    run_simulation(
        apps.server_app(layout.coordinator_config, rounds=2, nodes=NODES, result=result),
        apps.client_app(layout.root),
        num_supernodes=NODES,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    # Assert: the published model moved by the weighted mean of the clipped deltas, each round.
    final = np.array(json.loads(result.read_text())["final"])
    config = load_coordinator_config(layout.coordinator_config)
    clip = config.codec.clip
    weights = {p: apps.weight_for(p) for p in range(NODES)}
    mean = sum(
        weights[p] * np.clip(apps.delta_for(p).astype(np.float64), -clip, clip) for p in weights
    ) / sum(weights.values())
    step = 2 * clip / ((1 << config.codec.value_bits) - 1)
    assert np.max(np.abs(final - 2 * mean)) <= 2 * step
    assert np.max(np.abs(mean)) > 10 * step  # the check is not vacuous
    summary = verify_log(
        *read_log_files(config.state_dir)[:2], bytes.fromhex(layout.coordinator_public_key)
    )
    kinds = [e["event"] for e in summary.events]
    assert kinds.count("round_closed") == 2 and kinds.count("client_joined") >= NODES
    assert kinds[-1] == "federation_finished"
