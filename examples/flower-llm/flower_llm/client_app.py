"""The ClientApp: FlowerTune-style fine-tuning of a causal language model, plus one mod.

Each SuperNode fine-tunes LoRA adapters (FFA: A frozen from the federation's seed) on every
linear layer of the base model, on its own bank's card-fraud cases, with the loss on the answers
only. `fedlora_mod` turns the trained adapter into an encrypted, proven, signed contribution and
takes part in threshold decryption; nothing else here knows about encryption.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlora.client import make_trainer
from fedlora.client._causal import CausalLmTrainer, Instruction
from fedlora.config import load_client_config
from fedlora.flower import client_config_path, fedlora_mod

app = ClientApp(mods=[fedlora_mod])
HELD_OUT = 0.2  # the share of each bank's cases kept for evaluation, never trained on


@cache
def _trainer(path: Path) -> tuple[CausalLmTrainer, list[Instruction]]:
    """The base model, trained on this node's cases but a held-out share, and that share."""
    trainer = make_trainer(load_client_config(path))
    assert isinstance(trainer, CausalLmTrainer), "the node's YAML must say model.kind: causal-lm"
    cases = trainer.records
    keep = len(cases) - int(HELD_OUT * len(cases))
    trainer.use_data(cases[:keep], trainer.generator)
    return trainer, cases[keep:]


@app.train()
def train(msg: Message, context: Context) -> Message:
    trainer, _ = _trainer(client_config_path(context))
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
    """Eval loss on the answers, and the accuracy and F1 of the generated yes/no answers, on
    this bank's held-out cases (at most `eval-records` of them)."""
    trainer, held_out = _trainer(client_config_path(context))
    adapter = msg.content["arrays"]["adapter"].numpy()
    records = held_out[: int(context.run_config["eval-records"])]
    scores = trainer.answer_scores(adapter, records)
    metrics = {
        "eval-loss": trainer.eval_loss(adapter, records),
        "answer-accuracy": scores["accuracy"],
        "answer-f1": scores["f1"],
        "num-examples": len(records),
    }
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
