"""The training loop's batches: which rows each optimizer step takes, epoch by epoch, and which of
them this process takes.

The batch order is this project's own: `shuffled_batches` (prefbench.batching) with a numpy
generator seeded by train.seed, one fresh shuffle per epoch (`EpochBatches`, the DataLoader's
batch sampler), every process drawing the same batches and taking its share of each (`shard`), so
train_batch_size is the global batch and N processes take the optimizer steps of one.
(accelerate's own batch sharding either deals whole batches to processes, N times the batch, or
with split_batches cuts each batch evenly, dropping or repeating rows of a batch whose size the
process count does not divide.)

Token-budget batches (`models.<model>.train_token_budget` > 0): each global batch takes rows in
the epoch's shuffled order until the next would take it past the budget (`budget_batches`), so a
step trains on about the same number of tokens whatever the rows' lengths, and the processes split
each batch by tokens (`shard_tokens`). A resumed run draws (and drops) the epochs it completed
(`EpochBatches.skip`), so its generator stands where the killed run's stood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler

from prefbench.batching import collate, shuffled_batches
from prefbench.packing import collate_packed, next_fit


# A last batch of fewer rows than this share of train_batch_size joins another batch of its epoch:
# its loss would weigh as much as a full batch's (1601 rows at 32 a batch: one row alone a step).
MIN_BATCH_SHARE = 0.5


def optimizer_steps(n_rows: int, batch_size: int, grad_accum: int, epochs: float) -> int:
    whole, rest = divmod(n_rows, batch_size)
    batches_per_epoch = max(1, whole + (rest >= batch_size * MIN_BATCH_SHARE))  # see merge_small_batch
    return max(1, math.ceil(batches_per_epoch * epochs / grad_accum))


def merge_small_batch(batches: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """The epoch's batches with a remainder batch under MIN_BATCH_SHARE x batch_size rows appended
    to the batch after it (the one before, if it is last); an epoch of one batch stays as it is."""
    small = [k for k, b in enumerate(batches) if len(b) < batch_size * MIN_BATCH_SHARE]
    if len(batches) < 2 or not small:
        return batches
    k = small[0]
    into = k + 1 if k + 1 < len(batches) else k - 1
    out = list(batches)
    out[into] = np.concatenate([batches[into], batches[k]])
    del out[k]
    return out


def budget_batches(lengths: np.ndarray, token_budget: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of token-budget batches: the rows in a fresh random order, each batch taking them in
    that order until the next would take it past `token_budget` tokens (a longer row is a batch of
    its own). Not sorted by length, as shuffled_batches' are: packed batches have no padding to save."""
    return next_fit(rng.permutation(len(lengths)), lengths, token_budget)


class EpochBatches(Sampler):
    """Batch sampler: each iteration is one epoch, a fresh shuffle from the generator seeded once:
    batches of `batch_size` rows (prefbench.batching.shuffled_batches) taken last batch first (the order
    of the loop before accelerate, which popped them off the list: the same numbers), or with
    `token_budget` > 0 `budget_batches`, whose count differs between epochs."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, token_budget: int = 0):
        self.lengths, self.batch_size, self.seed, self.token_budget = lengths, batch_size, seed, token_budget
        self.rng = np.random.default_rng(seed)  # the same seed in every process: the same batches everywhere
        self.next = None  # the coming epoch, when drawn before it is iterated (`__len__`, `skip`)

    def draw(self) -> list[np.ndarray]:
        """The next epoch's batches, in training order (moves the generator)."""
        if self.token_budget:
            return budget_batches(self.lengths, self.token_budget, self.rng)
        return merge_small_batch(shuffled_batches(self.lengths, self.batch_size, self.rng)[::-1], self.batch_size)

    def __len__(self) -> int:
        """Batches in the coming epoch (drawn now if need be: the generator moves as iterating would)."""
        if self.next is None:
            self.next = self.draw()
        return len(self.next)

    def __iter__(self):
        epoch, self.next = self.next if self.next is not None else self.draw(), None
        yield from epoch

    def skip(self, micro: int) -> int:
        """Draw (and drop) the epochs that `micro` batches completed: where a resumed run's generator
        stood. Returns how many batches of the coming epoch are done (for skip_first_batches)."""
        while micro >= len(self):
            micro -= len(self)
            self.next = None
        return micro

    def optimizer_steps(self, grad_accum: int, epochs: float) -> int:
        """Optimizer steps of `epochs` epochs (fractional: that share of the last epoch's batches).
        Token-budget epochs differ in their number of batches: these are counted on the epochs that
        training will draw (a generator seeded the same; this one does not move)."""
        if not self.token_budget:
            return optimizer_steps(len(self.lengths), self.batch_size, grad_accum, epochs)
        plan = EpochBatches(self.lengths, self.batch_size, self.seed, self.token_budget)
        sizes = [len(plan.draw()) for _ in range(math.ceil(epochs))]
        whole = int(epochs)
        batches = sum(sizes[:whole]) + (epochs - whole) * sizes[whole] if epochs > whole else sum(sizes)
        return max(1, math.ceil(batches / grad_accum))


@dataclass
class Batch:
    # this process's rows: padded (input_ids, attention_mask) or one packed row (prefbench.packing.collate_packed)
    inputs: dict
    labels: torch.Tensor
    weight: float  # of this process's mean loss (`shard`)
    rows: int  # of the global batch
    tokens: int  # of the global batch
    longest: int  # tokens of this process's longest row
    local_tokens: int  # tokens of this process's rows


class ShardCollate:
    """collate_fn: a global batch of row indices -> this process's share of it (`shard`, or with
    `by_tokens` `shard_tokens`), padded or (`packed`) one packed row."""

    def __init__(self, sequences: list[np.ndarray], labels: np.ndarray, pad_token_id: int, rank: int, world: int,
                 mask_padding: bool = True, packed: bool = False, by_tokens: bool = False):
        self.sequences, self.pad_token_id, self.rank, self.world = sequences, pad_token_id, rank, world
        self.mask_padding = mask_padding  # prefbench.batching.masks_padding
        self.packed, self.by_tokens = packed, by_tokens
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.lengths = np.array([len(s) for s in sequences])

    def __call__(self, rows: list[int]) -> Batch:
        idx = np.asarray(rows, dtype=np.int64)
        if self.by_tokens:
            local, weight = shard_tokens(idx, self.lengths, self.rank, self.world)
        else:
            local, weight = shard(idx, self.rank, self.world)
        seqs = [self.sequences[i] for i in local]
        if self.packed:
            inputs = collate_packed(seqs, self.pad_token_id)
        else:
            inputs = collate(seqs, self.pad_token_id, mask_padding=self.mask_padding)
        return Batch(inputs, self.labels[local], weight, len(idx), int(self.lengths[idx].sum()),
                     int(self.lengths[local].max()), int(self.lengths[local].sum()))


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


def shard_tokens(idx: np.ndarray, lengths: np.ndarray, rank: int, world: int) -> tuple[np.ndarray, float]:
    """`shard` for token-budget batches, whose rows' lengths are mixed (not length-sorted, so every
    world-th row could leave one rank twice the tokens of another): rows dealt longest first, each
    to the rank with the fewest tokens so far (ties: fewer rows, then the lower rank). The same
    weights (local rows * world / batch rows; 1.0 on one device, the batch as it is) and the same
    rule for a rank left without a row."""
    if world == 1:
        return idx, 1.0
    tokens, parts = [0] * world, [[] for _ in range(world)]
    for i in idx[np.argsort(-lengths[idx], kind="stable")].tolist():
        r = min(range(world), key=lambda k: (tokens[k], len(parts[k]), k))
        parts[r].append(i)
        tokens[r] += int(lengths[i])
    local = np.array(parts[rank], dtype=idx.dtype)
    if len(local) == 0:
        return idx[:1], 0.0
    return local, len(local) * world / len(idx)
