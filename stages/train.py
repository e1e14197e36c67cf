"""Stage `train`: LoRA fine-tuning of the selected model as a 3-class sequence classifier.

Usage: python -m stages.train --params params.yaml --tokens data/tokens --out models/adapter \
           --metrics metrics/train.json --live dvclive
Reads params: model, models.<model>.{pretrained, dtype, attn_implementation, quantization,
lora_*, train_batch_size, gradient_checkpointing}, train.*.
Writes the adapter and score head (safetensors) and resolved_params.json to --out, per-step
loss and learning rate to --live (dvclive, for `dvc plots show`), and metrics/train.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import transformers
from dvclive import Live

from prefbench.config import load_params
from prefbench.metrics import device_name, peak_memory_gb, round_floats, write_json
from prefbench.models import count_parameters, load_model, load_tokenizer, pick_device
from prefbench.tokenize import read_tokens
from prefbench.train import add_lora, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tokens", required=True, help="token cache folder (stage tokenize)")
    parser.add_argument("--out", required=True, help="folder for the adapter")
    parser.add_argument("--metrics", required=True, help="training metrics JSON")
    parser.add_argument("--live", required=True, help="dvclive folder for per-step curves")
    args = parser.parse_args()
    params = load_params(args.params)
    cfg, tp = params.selected, params.train

    transformers.set_seed(tp.seed)
    device = pick_device()
    tok = load_tokenizer(cfg.pretrained)
    _, labels, seqs = read_tokens(args.tokens, "train")
    model, dtype, weights = load_model(cfg, tok.pad_token_id, device, seed=tp.seed)
    base_counts = count_parameters(model)
    attn = model.config._attn_implementation  # `auto` resolved (prefbench.models.resolve_attention)
    model = add_lora(model, cfg)
    trainable = count_parameters(model)["params_trainable"]
    print(f"train: {params.model} ({weights}, {dtype}, {attn}) on {device}: "
          f"{len(seqs)} rows, {base_counts['params_total']:,} parameters, {trainable:,} trainable")

    with Live(dir=args.live, save_dvc_exp=False, dvcyaml=None, report=None) as live:
        def log(step: int, values: dict) -> None:
            live.step = step
            for name, value in values.items():
                live.log_metric(f"train/{name}", value)
            live.next_step()

        result = train(model, seqs, labels, cfg, tp, tok.pad_token_id, device, log=log)

    out = Path(args.out)
    model.save_pretrained(out)  # adapter_model.safetensors: LoRA weights and the score head
    resolved = {"model": params.model, "weights": weights, "dtype": str(dtype).removeprefix("torch."),
                "pad_token_id": tok.pad_token_id, "models": dataclasses.asdict(cfg),
                "train": dataclasses.asdict(tp)}
    (out / "resolved_params.json").write_text(json.dumps(resolved, indent=2) + "\n")
    metrics = {
        "model": params.model, "weights": weights, "device": device_name(device),
        "dtype": resolved["dtype"], "attn_implementation": attn,
        "quantization": cfg.quantization, **round_floats(result), "params_trainable": trainable,
        "params_total": base_counts["params_total"], "peak_memory_gb": peak_memory_gb(device),
    }
    write_json(args.metrics, metrics)
    print(f"train: {result['steps']} steps in {result['train_seconds']:.1f} s, "
          f"{result['seconds_per_sample']:.4f} s/sample, {result['tokens_per_second']:.0f} tokens/s, "
          f"final loss {result['final_loss']:.4f}")


if __name__ == "__main__":
    main()
