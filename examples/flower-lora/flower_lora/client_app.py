"""The ClientApp: ordinary Flower training code, plus one mod.

Each SuperNode trains FFA-LoRA (rank 4, A frozen from the federation's seed) on its own bank's
transactions. `fedlora_mod` turns the trained adapter into an encrypted, proven, signed
contribution and takes part in threshold decryption; nothing else here knows about encryption.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlora.client import LocalTrainer, make_trainer
from fedlora.config import load_client_config
from fedlora.flower import client_config_path, fedlora_mod

app = ClientApp(mods=[fedlora_mod])


@cache
def _trainer(path: Path) -> LocalTrainer:
    return make_trainer(load_client_config(path))  # the base model and this node's own data


@app.train()
def train(msg: Message, context: Context) -> Message:
    trainer = _trainer(client_config_path(context))
    adapter = msg.content["arrays"]["adapter"].numpy()
    trained = trainer.train(adapter, int(msg.content["config"]["local-steps"]))
    return Message(
        RecordDict(
            {
                "arrays": ArrayRecord({"adapter": Array(np.asarray(trained, dtype=np.float32))}),
                "metrics": MetricRecord({"num-examples": trainer.num_examples}),
            }
        ),
        reply_to=msg,
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    trainer = _trainer(client_config_path(context))
    accuracy = trainer.evaluate(msg.content["arrays"]["adapter"].numpy())
    return Message(
        RecordDict(
            {"metrics": MetricRecord({"accuracy": accuracy, "num-examples": trainer.num_examples})}
        ),
        reply_to=msg,
    )
