"""The ServerApp: Flower's FedAvg for sampling and evaluation, fedlora for the aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedlora.config import load_coordinator_config
from fedlora.flower import FedloraStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    folder = Path(str(context.run_config["fedlora-dir"]))
    coordinator = folder / "coordinator.yaml"
    config = load_coordinator_config(coordinator)
    nodes = len(config.parties)
    strategy = FedloraStrategy(
        FedAvg(
            fraction_train=1.0,
            fraction_evaluate=float(context.run_config["fraction-evaluate"]),
            min_train_nodes=nodes,
            min_evaluate_nodes=nodes,
            min_available_nodes=nodes,
        ),
        coordinator,
        run_config=context.run_config,  # fedlora.* keys override the YAML, validated as it is
    )
    # The shared vector is the adapter's B matrices as offsets from their seeded start: zeros.
    size = config.model.num_parameters
    result = strategy.start(
        grid,
        ArrayRecord({"adapter": Array(np.zeros(size, dtype=np.float32))}),
        num_rounds=int(context.run_config["num-server-rounds"]),
        train_config=ConfigRecord({"local-steps": config.federated_learning.aggregation_frequency}),
    )
    np.save(folder / "flower-final-adapter.npy", result.arrays["adapter"].numpy())
    # What the members chose to share of their evaluations, per round (flower.share_metrics).
    shared = {r: dict(m.items()) for r, m in result.evaluate_metrics_clientapp.items()}
    (folder / "flower-evaluation.json").write_text(json.dumps(shared, indent=2) + "\n")
