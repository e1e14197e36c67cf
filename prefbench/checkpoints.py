"""Resumable training checkpoints through accelerate's `save_state` / `load_state`.

<checkpoint_dir>/step-00000050/ holds
  model.safetensors     the trainable parameters only (LoRA matrices, score head), by name: a save
                        hook swaps accelerate's whole-model state for them (the frozen base is
                        the pretrained weights, or rebuilt from the seed), and a load hook reads
                        them back, so a checkpoint of 1 process resumes on N and back
  optimizer.bin         accelerate: AdamW's state dict (torch.save)
  scheduler.bin         accelerate: the LR schedule's state dict (torch.save)
  random_states_<i>.pkl accelerate: process i's python, numpy, torch CPU and CUDA generator states
                        (torch.save); under fp16 also scaler.pt, the loss scale
  state.json            fingerprint, format, and where training stands (TrainState)
accelerate reads its .bin/.pkl/.pt files with torch.load(weights_only=True) (accelerate.utils.load:
tensors, numbers and numpy arrays only, no code is unpickled); the batch order is not stored:
the train loop replays the seeded shuffles (prefbench.train_batches.EpochBatches).

All processes write a checkpoint together (accelerate: the main process writes the weights,
optimizer and scheduler, each process its RNG states) into `.tmp-step-*`, which the main process
renames into place: a `step-*` folder is complete, and a kill at any moment leaves the previous
one intact. With several machines the folder must be on a file system they share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from prefbench.files import writing
from prefbench.packing import PackedClassifier

FORMAT = 2  # 1: the hand-written format before accelerate; such checkpoints are ignored (deleted)
WEIGHTS = "model.safetensors"  # accelerate's name for the first model's weights


@dataclass
class TrainState:
    """Where training stands, besides weights, optimizer, scheduler and RNGs: what a checkpoint
    needs to continue exactly where it stopped."""
    step: int = 0  # optimizer steps done
    micro: int = 0  # micro-batches done (the batch order is replayed up to here)
    seen: int = 0  # rows trained on
    tokens: int = 0
    loss_sum: float = 0.0  # training loss summed since the last logged point...
    loss_n: int = 0  # ...over this many micro-batches
    final_loss: float = float("nan")
    seconds: float = 0.0  # training time before the current run (checkpoint writes excluded)
    history: list = field(default_factory=list)  # [step, {name: value}] of every logged point


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


def classifier(accelerator, model):
    """The peft model inside accelerate's wrappers and packed training's PackedClassifier: its
    parameter names are the checkpoint's, so a run resumes whether it pads or packs."""
    model = accelerator.unwrap_model(model)
    return model.classifier if isinstance(model, PackedClassifier) else model


def trainable_only(accelerator):
    """Register accelerate save/load hooks that keep only the trainable parameters in a checkpoint
    (see the module doc); returns their handles, to `.remove()` when training ends."""
    def save_hook(models, weights, output_dir):
        for i, model in enumerate(models):
            named = classifier(accelerator, model).named_parameters()
            weights[i] = {n: p.detach().contiguous() for n, p in named if p.requires_grad}

    def load_hook(models, input_dir):
        model = classifier(accelerator, models.pop())  # popped: accelerate loads no whole-model state
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        saved = load_file(Path(input_dir) / WEIGHTS)
        if set(saved) != set(named):
            raise RuntimeError(f"checkpoint {input_dir} does not hold this model's trainable parameters")
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(saved[n])

    return [accelerator.register_save_state_pre_hook(save_hook), accelerator.register_load_state_pre_hook(load_hook)]


def save_checkpoint(accelerator, folder: str | Path, fp: str, st: TrainState) -> Path:
    """Called by every process at the same step (accelerate's save_state is collective)."""
    folder = Path(folder)
    final = folder / f"step-{st.step:08d}"
    tmp = folder / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while writing
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        with writing(final):  # no space: one line naming the checkpoint (prefbench.files)
            accelerator.save_state(tmp)
            if accelerator.is_main_process:
                meta = {"format": FORMAT, "fingerprint": fp, "train_state": dataclasses.asdict(st)}
                (tmp / "state.json").write_text(json.dumps(meta))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no partial checkpoint left behind
        raise
    accelerator.wait_for_everyone()  # every process's RNG file is written
    if accelerator.is_main_process:
        for f in tmp.iterdir():
            _fsync(f)
        os.replace(tmp, final)
        _fsync(folder)
        remove_checkpoints(folder, keep=final)  # the earlier ones
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, folder: str | Path, fp: str) -> TrainState | None:
    """Restore the latest checkpoint in `folder` into the prepared model, optimizer, scheduler and
    the RNGs (every process); return its TrainState, or None when there is none or (then deleted,
    saying so) it was made with other params, data or versions."""
    path = latest_checkpoint(folder)
    if path is None:
        return None
    try:
        meta = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as err:
        meta = {"fingerprint": f"unreadable ({err})"}
    if meta.get("format") != FORMAT or meta.get("fingerprint") != fp:
        accelerator.print(f"train: ignoring checkpoint {path}: made with other params, data or versions "
                          f"(fingerprint {meta.get('fingerprint')}, this run {fp}); training from step 0", flush=True)
        accelerator.wait_for_everyone()  # every process has decided before the main one deletes
        if accelerator.is_main_process:
            remove_checkpoints(folder)
        return None
    accelerator.load_state(path)
    accelerator.wait_for_everyone()  # every process has read it before the main one may replace it
    st = TrainState(**meta["train_state"])
    accelerator.print(f"train: resuming from checkpoint {path} (optimizer step {st.step}, micro-batch {st.micro})",
                      flush=True)
    return st


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
