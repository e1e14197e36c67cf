"""LoRA fine-tuning of a sequence classifier: peft adapters on the chosen linear layers plus the
score head, AdamW with linear warm-up and cosine decay, gradient accumulation.

Training can be killed and resumed: every `train.checkpoint_every` optimizer steps it writes a
checkpoint (trainable weights, optimizer and scheduler state, RNG states, position in the data)
and a new run with the same params and data continues from the latest one, to the same weights
bit for bit on CPU. Checkpoints hold safetensors and JSON only: nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
from safetensors.torch import load_file, save_file
from transformers import get_cosine_schedule_with_warmup

from prefbench.cli import progress
from prefbench.config import ModelParams, TrainParams
from prefbench.infer import collate, oom_guard, shuffled_batches, synchronize, to_device
from prefbench.models import resolve_dtype


class NonFiniteLossError(RuntimeError):
    """The training loss (or gradient norm) became nan or inf; the message names the step."""


def add_lora(model, cfg: ModelParams):
    """Wrap the base classifier with LoRA adapters; the score head is trained in full.

    TaskType.SEQ_CLS makes peft keep the score head trainable and save it with the adapter.
    """
    if cfg.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules),
    )
    return get_peft_model(model, lora)


def optimizer_steps(n_rows: int, batch_size: int, grad_accum: int, epochs: float) -> int:
    batches_per_epoch = math.ceil(n_rows / batch_size)
    return max(1, math.ceil(batches_per_epoch * epochs / grad_accum))


@dataclass
class TrainState:
    """Where training stands, besides weights, optimizer, scheduler and RNGs: what a checkpoint
    needs to continue exactly where it stopped."""
    step: int = 0  # optimizer steps done
    micro: int = 0  # micro-batches done
    batches: list[np.ndarray] = field(default_factory=list)  # this epoch's batches not yet run
    seen: int = 0  # rows trained on
    tokens: int = 0
    loss_sum: float = 0.0  # training loss summed since the last logged point...
    loss_n: int = 0  # ...over this many micro-batches
    final_loss: float = float("nan")
    seconds: float = 0.0  # training time before the current run (checkpoint writes excluded)
    history: list = field(default_factory=list)  # [step, {name: value}] of every logged point


def train(model, sequences: list[np.ndarray], labels: np.ndarray, cfg: ModelParams, tp: TrainParams,
          pad_token_id: int, device: torch.device, log=None, checkpoint_dir: str | Path | None = None,
          fingerprint: str = "", name: str = "<model>") -> dict:
    """Train in place. `log(step, metrics)` is called every `tp.log_every` optimizer steps.

    Under torchrun (torch.distributed initialised, see `init_distributed`) every process holds a
    model copy, runs the same shuffled batches and takes every world-th row of each (`shard`);
    losses are weighted so DDP's gradient average equals the gradient of the whole batch's mean
    loss: the same optimizer steps as one device, up to float summation order. Only rank 0 writes
    checkpoints; pass `log` on rank 0 only.

    With `checkpoint_dir`, training resumes from the latest checkpoint there whose `fingerprint`
    (params and data, see `fingerprint`) matches, and writes one every `tp.checkpoint_every`
    optimizer steps (0: none); on resume the points logged before it are passed to `log` again, so a
    fresh log holds the whole curve. `name` (the model's key in params.yaml) goes into error messages.
    """
    rank, world = world_info()
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    rng = np.random.default_rng(tp.seed)  # the same seed on every rank: the same batches everywhere
    lengths = np.array([len(s) for s in sequences])
    total_steps = optimizer_steps(len(sequences), cfg.train_batch_size, tp.grad_accum_steps, tp.epochs)
    micro_batches = total_steps * tp.grad_accum_steps
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=tp.learning_rate, weight_decay=tp.weight_decay)
    sched = get_cosine_schedule_with_warmup(optim, int(tp.warmup_ratio * total_steps), total_steps)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    # Autocast on GPUs: a 4-bit base trains with fp32 norms and embeddings (peft's k-bit
    # preparation), and the fp32 LoRA matrices meet bf16/fp16 activations; autocast keeps the
    # matmuls in the half-precision dtype, as HF Trainer's bf16/fp16 flags do.
    dtype = resolve_dtype(cfg.dtype, device.type)
    amp = dict(device_type=device.type, dtype=dtype, enabled=device.type == "cuda" and dtype != torch.float32)
    checkpointing = checkpoint_dir is not None and tp.checkpoint_every > 0

    st = TrainState()
    if checkpoint_dir is not None:
        st = load_checkpoint(checkpoint_dir, fingerprint, model, optim, sched, rng, remove_stale=rank == 0) or st
        if world > 1:
            dist.barrier()  # every rank has read the checkpoint before rank 0 may replace it
    if log is not None:
        for step, values in st.history:  # resumed: the curve up to the checkpoint, again
            log(step, values)

    def ensure_finite(what: str, value: float) -> float:
        if not math.isfinite(value):
            raise NonFiniteLossError(
                non_finite_message(what, value, st.step + 1, total_steps, dtype, tp.learning_rate, name))
        return value

    model.train()
    synchronize(device)
    start = time.perf_counter()
    with progress(total=total_steps, initial=st.step, desc="train", unit="step", disable=rank > 0) as bar:
        for micro in range(st.micro, micro_batches):
            if not st.batches:  # next epoch: a fresh shuffle
                st.batches = shuffled_batches(lengths, cfg.train_batch_size, rng)
            idx = st.batches.pop()
            local, weight = shard(idx, rank, world)
            batch = to_device(collate([sequences[i] for i in local], pad_token_id), device)
            step_ends = (micro + 1) % tp.grad_accum_steps == 0
            sync = net.no_sync() if world > 1 and not step_ends else nullcontext()  # all-reduce once per step
            with sync, oom_guard("train", len(local), int(lengths[local].max()), cfg, name, step=st.step + 1):
                with torch.autocast(**amp):
                    out = net(**batch, labels=labels_t[local].to(device))
                loss = ensure_finite("loss", batch_mean(out.loss.detach() * weight, world))
                (out.loss * weight / tp.grad_accum_steps).backward()
                if step_ends:
                    ensure_finite("gradient norm", torch.nn.utils.clip_grad_norm_(params, tp.max_grad_norm).item())
                    optim.step()
            st.micro, st.seen, st.tokens = micro + 1, st.seen + len(idx), st.tokens + int(lengths[idx].sum())
            st.loss_sum += loss
            st.loss_n += 1
            if not step_ends:
                continue
            sched.step()
            optim.zero_grad(set_to_none=True)
            st.step += 1
            bar.update(1)
            if st.step % tp.log_every == 0 or st.step == total_steps:
                st.final_loss = st.loss_sum / st.loss_n
                values = {"loss": st.final_loss, "learning_rate": sched.get_last_lr()[0]}
                st.history.append([st.step, values])
                if log is not None:
                    log(st.step, values)
                bar.set_postfix(loss=f"{st.final_loss:.4f}")
                st.loss_sum, st.loss_n = 0.0, 0
            if checkpointing and rank == 0 and st.step % tp.checkpoint_every == 0 and st.step < total_steps:
                synchronize(device)
                st.seconds += time.perf_counter() - start  # the clock stops while the checkpoint is written
                save_checkpoint(checkpoint_dir, fingerprint, model, optim, sched, rng, st)
                start = time.perf_counter()
    synchronize(device)
    seconds = st.seconds + time.perf_counter() - start
    return {"final_loss": st.final_loss, "train_seconds": round(seconds, 3), "steps": st.step, "samples": st.seen,
            "tokens": st.tokens, "seconds_per_sample": seconds / max(st.seen, 1),
            "tokens_per_second": st.tokens / seconds}


def world_info() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(idx: np.ndarray, rank: int, world: int) -> tuple[np.ndarray, float]:
    """This rank's rows of a global batch (every world-th) and the weight of its mean loss, such
    that the average over ranks of weight * local mean = the mean over the whole batch
    (weight = local rows * world / batch rows; exactly 1.0 on one device). A rank left without a
    row (a last batch smaller than the world) reruns the batch's first row with weight 0, so it
    still joins the gradient all-reduce."""
    local = idx[rank::world]
    if len(local) == 0:
        return idx[:1], 0.0
    return local, len(local) * world / len(idx)


def batch_mean(weighted_loss: torch.Tensor, world: int) -> float:
    """The whole batch's mean loss from each rank's weighted local mean (all ranks get the same
    value, so a non-finite loss stops every rank at the same step)."""
    if world > 1:
        weighted_loss = weighted_loss.clone()
        dist.all_reduce(weighted_loss)
        weighted_loss /= world
    return weighted_loss.item()


def init_distributed() -> torch.device:
    """In a process started by torchrun: join the process group (NCCL on GPUs, gloo on CPU) and
    return this process's device (GPU LOCAL_RANK, or the CPU)."""
    local = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return device


def non_finite_message(what: str, value: float, step: int, total_steps: int, dtype: torch.dtype,
                       learning_rate: float, name: str = "<model>") -> str:
    dt = str(dtype).removeprefix("torch.")
    fix = (f"set models.{name}.dtype: bfloat16 (GPUs of compute capability 8.0+) or float32, "
           f"or lower train.learning_rate (now {learning_rate:g})")
    if dtype == torch.float16:
        why = "float16 overflows (values past 65504) are a known Gemma2 failure"
    elif dtype == torch.bfloat16:
        why = "bfloat16 cannot overflow where float32 does not, so look first at the learning rate"
        fix = f"lower train.learning_rate (now {learning_rate:g}) or set models.{name}.dtype: float32"
    else:
        why = f"in {dt} this is no half-precision overflow but most likely diverging weights"
        fix = f"lower train.learning_rate (now {learning_rate:g}) or train.max_grad_norm"
    return (f"training {what} is {value} at optimizer step {step} of {total_steps}, computing in {dt}; "
            f"training stopped. {why}: {fix}.")


# --- Checkpoints -----------------------------------------------------------------------------
# <checkpoint_dir>/step-00000050/ holds
#   trainable.safetensors  the trainable parameters (LoRA matrices, score head) by name
#   optimizer.safetensors  the optimizer's per-parameter tensors ("<index>.<name>")
#   rng.safetensors        torch's CPU and CUDA generator states
#   state.json             fingerprint, TrainState, optimizer param groups, scheduler state,
#                          numpy Generator and python `random` states
# It is written to a temporary folder and renamed into place, so a step-* folder is complete;
# a kill at any moment leaves the previous checkpoint intact.

CHECKPOINT_FORMAT = 1


def fingerprint(settings: dict, files: list[str | Path]) -> str:
    """Hash of the settings that determine training (JSON-able) and the bytes of its input files.
    A checkpoint is only resumed by a run with the same fingerprint."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def latest_checkpoint(folder: str | Path) -> Path | None:
    steps = sorted(Path(folder).glob("step-*")) if Path(folder).is_dir() else []
    return steps[-1] if steps else None


def remove_checkpoints(folder: str | Path, keep: Path | None = None) -> None:
    """Delete the checkpoints in `folder` (and temporary folders of killed runs) but `keep`; then
    the folder itself if empty. Nothing else in it is touched."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in [*folder.glob("step-*"), *folder.glob(".tmp-*")]:
        if entry != keep:
            shutil.rmtree(entry, ignore_errors=True)
    if not any(folder.iterdir()):
        folder.rmdir()


def save_checkpoint(folder: str | Path, fp: str, model, optim, sched, rng: np.random.Generator,
                    st: TrainState) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{st.step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, tmp / "trainable.safetensors")
    opt = optim.state_dict()
    opt_tensors = {f"{i}.{k}": v.contiguous() for i, s in opt["state"].items() for k, v in s.items()
                   if torch.is_tensor(v)}
    opt_values = {str(i): {k: v for k, v in s.items() if not torch.is_tensor(v)} for i, s in opt["state"].items()}
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    rng_tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng_tensors |= {f"torch_cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    save_file(rng_tensors, tmp / "rng.safetensors")
    state = dataclasses.asdict(dataclasses.replace(st, batches=[b.tolist() for b in st.batches]))
    meta = {"format": CHECKPOINT_FORMAT, "fingerprint": fp, "train_state": state,
            "optimizer": {"param_groups": opt["param_groups"], "state_values": opt_values},
            "scheduler": sched.state_dict(), "numpy_rng": rng.bit_generator.state,
            "python_random": random.getstate()}
    (tmp / "state.json").write_text(json.dumps(meta))
    for f in tmp.iterdir():
        _fsync(f)
    os.replace(tmp, final)
    _fsync(folder)
    remove_checkpoints(folder, keep=final)  # the earlier ones
    return final


def load_checkpoint(folder: str | Path, fp: str, model, optim, sched,
                    rng: np.random.Generator, remove_stale: bool = True) -> TrainState | None:
    """Restore the latest checkpoint in `folder` into model, optim, sched, rng and the global RNGs;
    return its TrainState, or None when there is none or (then deleted, saying so) it was made
    with other params, data or versions."""
    path = latest_checkpoint(folder)
    if path is None:
        return None
    try:
        meta = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as err:
        meta = {"fingerprint": f"unreadable ({err})"}
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("fingerprint") != fp:
        print(f"train: ignoring checkpoint {path}: made with other params, data or versions "
              f"(fingerprint {meta.get('fingerprint')}, this run {fp}); training from step 0", flush=True)
        if remove_stale:  # under DDP only rank 0 deletes
            remove_checkpoints(folder)
        return None
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    trainable = load_file(path / "trainable.safetensors")
    if set(trainable) != set(named):
        raise RuntimeError(f"checkpoint {path} does not hold this model's trainable parameters")
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(trainable[n])
    opt_tensors = load_file(path / "optimizer.safetensors")
    state = {int(i): dict(values) for i, values in meta["optimizer"]["state_values"].items()}
    for key, value in opt_tensors.items():
        i, k = key.split(".", 1)
        state[int(i)][k] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["optimizer"]["param_groups"]]
    optim.load_state_dict({"state": state, "param_groups": groups})
    sched.load_state_dict(meta["scheduler"])
    rng.bit_generator.state = meta["numpy_rng"]
    version, internal, gauss = meta["python_random"]
    random.setstate((version, tuple(internal), gauss))
    rng_tensors = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng_tensors["torch_cpu"])
    cuda = [rng_tensors[f"torch_cuda.{i}"] for i in range(len(rng_tensors) - 1)]
    if cuda and len(cuda) == torch.cuda.device_count():  # same number of GPUs as the run that wrote it
        torch.cuda.set_rng_state_all(cuda)
    st = TrainState(**meta["train_state"])
    st.batches = [np.asarray(b, dtype=np.int64) for b in st.batches]
    print(f"train: resuming from checkpoint {path} (optimizer step {st.step}, micro-batch {st.micro})", flush=True)
    return st


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
