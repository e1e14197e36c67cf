"""The training loop: LoRA fine-tuning of a sequence classifier on Hugging Face accelerate, AdamW
with linear warm-up and cosine decay, gradient accumulation, mixed precision on GPUs, one process
or several (one per device, on one or several machines; prefbench.launch starts them).

`Accelerator` places the model and batches on this process's device, wraps the model for DDP when
there are several processes, autocasts to bf16/fp16 on GPUs (fp16 with a GradScaler) and runs
gradient accumulation (gradients all-reduced once per optimizer step). Which rows each step takes,
and which of them this process takes, is prefbench.train_batches' job (seeded shuffles, token
budgets, shards). Packed training (`models.<model>.packing`, resolved as for inference:
prefbench.packing.resolve_packing): each process's share of a batch is one packed row, no padding,
through prefbench.packing.PackedClassifier (the module accelerate prepares); on a varlen
flash-attention kernel that is the kernel's packed path.

Training can be killed and resumed: every `train.checkpoint_every` optimizer steps all processes
write a checkpoint (prefbench.checkpoints, accelerate's save_state) and a new run with the same
params and data continues from the latest one (load_state, the seeded shuffles replayed and
accelerate's skip_first_batches past the batches done), to the same weights bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import accelerate
import numpy as np
import peft
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration
from peft.helpers import disable_input_dtype_casting
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from prefbench.batching import masks_padding, synchronize, to_device
from prefbench.checkpoints import TrainState, fingerprint, load_checkpoint, save_checkpoint, trainable_only
from prefbench.config import ModelParams, Params, TrainParams
from prefbench.device_errors import NonFiniteLossError, non_finite_message, oom_guard
from prefbench.lora import add_lora, fused_lora_add
from prefbench.metrics import device_name
from prefbench.models import count_parameters, load_model, load_tokenizer, resolve_dtype
from prefbench.packing import (VARLEN_ATTENTION, PackedClassifier, resolve_packing, split_classifier,
                               unreachable_window_off)
from prefbench.progress import progress
from prefbench.tokenize import read_tokens
from prefbench.train_batches import EpochBatches, ShardCollate


def mixed_precision(cfg: ModelParams, device_type: str) -> str:
    """accelerate's mixed_precision for this model on this kind of device: on GPUs autocast to the
    base's half-precision dtype (a 4-bit base trains with fp32 norms and LoRA matrices that meet
    bf16/fp16 activations; autocast keeps the matmuls in half precision, as HF Trainer's bf16/fp16
    flags do); "no" on CPUs, where models compute in their own dtype (fp64 by default)."""
    if device_type != "cuda":
        return "no"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(resolve_dtype(cfg.dtype, device_type), "no")


def make_accelerator(cfg: ModelParams, tp: TrainParams, device_type: str | None = None) -> Accelerator:
    """The Accelerator of a training run: GPUs when torch sees any (else CPU processes, gloo), the
    mixed precision of `mixed_precision`, train.grad_accum_steps. Under a launcher it joins the
    process group (this process's GPU: LOCAL_RANK)."""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    # split_batches: a batch is the global batch, split over the processes (`shard`), so the LR
    # schedule steps once per optimizer step, not once per process.
    return Accelerator(cpu=device_type == "cpu", mixed_precision=mixed_precision(cfg, device_type),
                       gradient_accumulation_steps=tp.grad_accum_steps,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def train(model, sequences: list[np.ndarray], labels: np.ndarray, cfg: ModelParams, tp: TrainParams,
          pad_token_id: int, device: torch.device | None = None, log=None, checkpoint_dir=None,
          fingerprint: str = "", name: str = "<model>", accelerator: Accelerator | None = None) -> dict:
    """Train `model` (on `accelerator.device`) in place. `log(step, metrics)` is called every
    `tp.log_every` optimizer steps; pass it on the main process only. Without `accelerator` one is
    made for `device`'s type (one process).

    With several processes every one holds a model copy (DDP), draws the same batches and trains on
    its share of each; losses are weighted (`shard`) so DDP's gradient average is the gradient of
    the whole batch's mean loss: the optimizer steps of one process, up to float summation order.

    Batches: `cfg.train_batch_size` rows, or with `cfg.train_token_budget` > 0 rows up to that many
    tokens (`budget_batches`). Packed (`cfg.packing` resolved for the model's attention): each
    process's rows as one packed row through a PackedClassifier around `model` (what accelerate
    prepares); `model` itself is trained in place either way.

    With `checkpoint_dir`, training resumes from the latest checkpoint there whose `fingerprint`
    (params and data, see `run_fingerprint`) matches, and writes one every `tp.checkpoint_every`
    optimizer steps (0: none); on resume the points logged before it are passed to `log` again, so
    a fresh log holds the whole curve. `name` (the model's key in params.yaml) goes into error messages.
    """
    accelerator = accelerator or make_accelerator(cfg, tp, device.type if device is not None else None)
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    lengths = np.array([len(s) for s in sequences])
    attn = model.config._attn_implementation
    packed = resolve_packing(cfg.packing, attn, f"models.{name}.packing")
    batches = EpochBatches(lengths, cfg.train_batch_size, tp.seed, cfg.train_token_budget)
    total_steps = batches.optimizer_steps(tp.grad_accum_steps, tp.epochs)
    micro_batches = total_steps * tp.grad_accum_steps
    params = [p for p in model.parameters() if p.requires_grad]
    # fused on GPUs: one kernel sweep over all LoRA tensors (hundreds of small ones) instead of a
    # few kernel launches per tensor group; CPU runs keep the default (their numbers are tested)
    optim = torch.optim.AdamW(params, lr=tp.learning_rate, weight_decay=tp.weight_decay,
                              fused=device.type == "cuda")
    sched = get_cosine_schedule_with_warmup(optim, int(tp.warmup_ratio * total_steps), total_steps)
    net, optim, sched = accelerator.prepare(PackedClassifier(model) if packed else model, optim, sched)
    hooks = trainable_only(accelerator)
    # Its own generator: DataLoader draws a base seed per iteration, which must not move the global
    # torch RNG that dropout uses (the numbers of the loop before accelerate).
    collate_fn = ShardCollate(sequences, labels, pad_token_id, rank, world, masks_padding(model), packed=packed,
                              by_tokens=cfg.train_token_budget > 0)
    loader = DataLoader(range(len(sequences)), batch_sampler=batches, generator=torch.Generator(),
                        collate_fn=collate_fn)
    # Varlen kernels get a sliding window no packed row can reach turned off for the whole run, not
    # per forward: gradient checkpointing recomputes each layer's forward in backward, after a
    # per-forward switch would have put the window (another kernel) back.
    window_off = packed and attn in VARLEN_ATTENTION
    window = unreachable_window_off(split_classifier(model)[0], int(lengths.max())) if window_off else nullcontext()
    # Under autocast (GPU bf16 / fp16) peft would cast each LoRA layer's input (a full activation)
    # to the float32 LoRA weights, a copy autocast undoes at once for the matmul: off, same numbers
    # (tests/test_numerics.py). Why it matters: the copies take GPU time, and each is kept for the
    # backward (GPU memory): benchmarks/results/train-cast-h100.*.json at commit 29c075c.
    uncast = disable_input_dtype_casting(model, active=accelerator.mixed_precision != "no")
    # LoRA's scale-and-add inside B's matmul (prefbench.lora.fused_lora_add): the same function with
    # two memory-bound passes fewer per adapted layer on GPUs; CPU runs (fp64) keep peft's own forward.
    fused = fused_lora_add(model, active=accelerator.mixed_precision != "no")
    dtype = resolve_dtype(cfg.dtype, device.type)
    checkpointing = checkpoint_dir is not None and tp.checkpoint_every > 0

    st = TrainState()
    if checkpoint_dir is not None:
        st = load_checkpoint(accelerator, checkpoint_dir, fingerprint) or st
    if log is not None:
        for step, values in st.history:  # resumed: the curve up to the checkpoint, again
            log(step, values)

    # Losses and gradient norms stay on the device until a logged step, a checkpoint or the end reads
    # them all at once (`flush`): one host sync per log_every steps instead of two per step, so the
    # host queues the next step's kernels while the GPU still runs this one.
    pending: list[tuple[int, str, torch.Tensor]] = []  # (optimizer step, what, 0-d tensor) not read yet

    def flush() -> None:
        """Read the pending values; a non-finite one stops the run naming its step (the first, in
        order: every process reads the same reduced losses and stops at the same point); the losses
        go into the running sum of the loss curve, in the order they came."""
        if not pending:
            return
        values = torch.stack([v.detach().double() for _, _, v in pending]).tolist()
        for (step, what, _), value in zip(pending, values):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    non_finite_message(what, value, step, total_steps, dtype, tp.learning_rate, name))
            if what == "loss":
                st.loss_sum += value
                st.loss_n += 1
        pending.clear()

    net.train()
    done = batches.skip(st.micro)
    synchronize(device)
    start = time.perf_counter()
    # (optimizer step, run clock, tokens) at each logged step of this process's run, for steady_rate:
    # read right after `flush`'s host sync, so the clock has waited for the GPU; checkpoint writes
    # are excluded.
    marks = [(st.step, st.seconds, st.tokens)]
    with window, uncast, fused, progress(total=total_steps, initial=st.step, desc="train", unit="step",
                                  disable=not accelerator.is_main_process) as bar:
        while st.micro < micro_batches:
            epoch_loader = accelerator.skip_first_batches(loader, done) if done else loader
            done = 0
            for batch in epoch_loader:
                with accelerator.accumulate(net), oom_guard("train", len(batch.labels), batch.longest, cfg, name,
                                                            step=st.step + 1, tokens=batch.local_tokens):
                    out = net(**to_device({**batch.inputs, "labels": batch.labels}, device))
                    # the whole batch's mean loss, the same in every process
                    pending.append((st.step + 1, "loss", accelerator.reduce(out.loss.detach() * batch.weight, "mean")))
                    accelerator.backward(out.loss * batch.weight)  # divided by grad_accum_steps
                    if accelerator.sync_gradients:
                        norm = accelerator.clip_grad_norm_(params, tp.max_grad_norm)
                        if accelerator.scaler is None:  # fp16: the GradScaler skips steps of inf gradients
                            pending.append((st.step + 1, "gradient norm", norm))
                    optim.step()  # these three act once per accumulation window (accelerate)
                    sched.step()
                    optim.zero_grad(set_to_none=True)
                st.micro, st.seen, st.tokens = st.micro + 1, st.seen + batch.rows, st.tokens + batch.tokens
                if accelerator.sync_gradients:
                    st.step += 1
                    if st.step % tp.log_every == 0 or st.step == total_steps:
                        flush()
                        marks.append((st.step, st.seconds + time.perf_counter() - start, st.tokens))
                        # final_loss: the mean batch loss since the last logged step (the last point
                        # of the loss curve); the bar shows it from this step on (postfix, then update)
                        st.final_loss = st.loss_sum / st.loss_n
                        values = {"loss": st.final_loss, "learning_rate": sched.get_last_lr()[0]}
                        st.history.append([st.step, values])
                        if log is not None:
                            log(st.step, values)
                        bar.set_postfix(loss=f"{st.final_loss:.4f}", refresh=False)
                        st.loss_sum, st.loss_n = 0.0, 0
                    bar.update(1)
                    if checkpointing and st.step % tp.checkpoint_every == 0 and st.step < total_steps:
                        flush()  # the checkpoint holds the loss sum so far (and no non-finite step)
                        synchronize(device)
                        st.seconds += time.perf_counter() - start  # the clock stops while the checkpoint is written
                        save_checkpoint(accelerator, checkpoint_dir, fingerprint, st)
                        start = time.perf_counter()
                if st.micro == micro_batches:
                    break
    flush()
    synchronize(device)
    seconds = st.seconds + time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    # `model` runs without the autocast wrapper again (packed: the wrapper had it; `model` trained in place)
    accelerator.unwrap_model(net, keep_fp32_wrapper=False)
    return {"final_loss": st.final_loss, "train_seconds": round(seconds, 3), "steps": st.step, "samples": st.seen,
            "tokens": st.tokens, "seconds_per_sample": seconds / max(st.seen, 1),
            "tokens_per_second": st.tokens / seconds,
            "steady_tokens_per_second": steady_rate(marks) or st.tokens / seconds}


def steady_rate(marks: list[tuple[int, float, int]]) -> float | None:
    """Tokens per second over about the second half of a run's optimizer steps, from (step, clock,
    tokens) at the logged steps (the first mark: where the run started): from the last mark at or
    before the half-way step to the last mark. The first steps meet every new shape's kernel compiles
    (flash-attn-4, Triton; a GPU's first cuBLAS plans), which tokens_per_second includes and a long
    run amortises (with marks too sparse for a second half: from the start). None with fewer than 2
    steps."""
    first, last = marks[0][0], marks[-1][0]
    if last - first < 2:
        return None
    half = last - (last - first) // 2
    s0, t0, n0 = max((m for m in marks if m[0] <= half), key=lambda m: m[0])
    _, t1, n1 = marks[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else None


@dataclass
class FineTuned:
    model: object  # the peft model, trained
    result: dict  # train()'s
    weights: str  # "pretrained" or "random-init" (prefbench.models.load_model)
    dtype: torch.dtype
    attn_implementation: str
    params_total: int  # of the base model
    params_trainable: int
    pad_token_id: int


def fine_tune(accelerator: Accelerator, params: Params, tokens: str, checkpoint_dir, log=None) -> FineTuned:
    """The train stage's work for an LLM: the selected base on this process's device, LoRA, the
    token cache's train split, `train` (resuming from `checkpoint_dir`). Prints one line on what
    trains where."""
    cfg, tp = params.selected, params.train
    transformers.set_seed(tp.seed)
    tok = load_tokenizer(cfg.pretrained)
    _, labels, seqs = read_tokens(tokens, "train")
    model, dtype, weights = load_model(cfg, tok.pad_token_id, accelerator.device, seed=tp.seed)
    total = count_parameters(model)["params_total"]
    attn = model.config._attn_implementation  # `auto` resolved (prefbench.models.resolve_attention)
    model = add_lora(model, cfg)
    trainable = count_parameters(model)["params_trainable"]
    packed = ", packed" if resolve_packing(cfg.packing, attn, f"models.{params.model}.packing") else ""
    accelerator.print(f"train: {params.model} ({weights}, {dtype}, {attn}{packed}) on {accelerator.num_processes} x "
                      f"{device_name(accelerator.device)}: {len(seqs)} rows, {total:,} parameters, "
                      f"{trainable:,} trainable", flush=True)
    result = train(model, seqs, labels, cfg, tp, tok.pad_token_id, log=log, checkpoint_dir=checkpoint_dir,
                   fingerprint=run_fingerprint(params, tokens), name=params.model, accelerator=accelerator)
    return FineTuned(model, result, weights, dtype, attn, total, trainable, tok.pad_token_id)


def run_fingerprint(params: Params, tokens: str) -> str:
    """What a checkpoint must have been made with to be resumed: the params training reads
    (checkpoint_every, devices and eval_batch_size aside: a run of 2 processes takes the same steps
    as one), the token cache, and the library versions."""
    cfg = {k: v for k, v in dataclasses.asdict(params.selected).items() if k != "eval_batch_size"}
    settings = {"model": params.model, "models": cfg,
                "train": {k: v for k, v in dataclasses.asdict(params.train).items()
                          if k not in ("checkpoint_every", "devices")},
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                             "peft": peft.__version__, "accelerate": accelerate.__version__}}
    return fingerprint(settings, [Path(tokens) / "meta.json", Path(tokens) / "train.arrow"])
