"""A Flower ClientApp and ServerApp for the tests: each node's "training" adds a known delta, so
the test can check that what fedlora publishes is the weighted mean of the clipped deltas.

Importable by Ray's workers (a module, not a test function's closure).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedlora.flower import FedloraStrategy, make_fedlora_mod

SIZE = 300  # float32 parameters in the test model (two arrays)


def delta_for(partition: int, size: int = SIZE) -> np.ndarray:
    """Node ``partition``'s update: some values beyond the codec's clip (1.0)."""
    return np.random.default_rng(1000 + partition).normal(0, 0.8, size).astype(np.float32)


def initial_vector() -> np.ndarray:
    """The ServerApp's initial arrays, flattened (not zeros: version 0 is the whole model)."""
    return np.random.default_rng(7).normal(0, 0.5, SIZE).astype(np.float32)


def weight_for(partition: int) -> int:
    return 1 + partition % 4


def client_app(configs: Path) -> ClientApp:
    app = ClientApp(mods=[make_fedlora_mod(configs)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        failing = os.environ.get("FEDLORA_TEST_FAIL_ROUND_1")  # the refusal test's straggler
        first_round = int(msg.content["config"]["server-round"]) == 1
        if failing is not None and partition == int(failing) and first_round:
            raise RuntimeError("this node's training failed")
        return train_reply(msg, partition)

    return app


def train_reply(msg: Message, partition: int) -> Message:
    """Node ``partition``'s "training": its known delta added to the arrays it was sent."""
    arrays = msg.content["arrays"]
    flat = np.concatenate([a.numpy().ravel() for a in arrays.values()])
    updated = flat + delta_for(partition, flat.size)
    out, offset = {}, 0
    for key, array in arrays.items():
        n = int(np.prod(array.shape))
        out[key] = Array(updated[offset : offset + n].reshape(array.shape))
        offset += n
    return Message(
        RecordDict(
            {
                "arrays": ArrayRecord(out),
                "metrics": MetricRecord({"num-examples": weight_for(partition)}),
            }
        ),
        reply_to=msg,
    )


def server_app(coordinator: Path, rounds: int, nodes: int, result: Path) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedloraStrategy(
            FedAvg(
                fraction_train=1.0,
                fraction_evaluate=0.0,
                min_train_nodes=nodes,
                min_available_nodes=nodes,
            ),
            coordinator,
            timeout=300,
        )
        start = initial_vector()
        initial = ArrayRecord(
            {
                "a": Array(start[:100].reshape(10, 10)),
                "b": Array(start[100:]),
            }
        )
        outcome = strategy.start(
            grid, initial, num_rounds=rounds, train_config=ConfigRecord({"lr": 0.1})
        )
        final = np.concatenate([a.numpy().ravel() for a in outcome.arrays.values()])
        result.write_text(json.dumps({"final": final.tolist(), "pid": os.getpid()}))

    return app
