"""Deterministic, resumable, data-parallel-sharded batches of prompts.

Each epoch visits a permutation of the whole dataset drawn from ``(seed, epoch)``; every step consumes one *global*
batch of ``batch_size * dp_size`` prompts from it, and rank ``dp_rank`` takes its contiguous slice. A partial global
batch at the end of an epoch is dropped (so that all ranks always step together), and the next epoch starts. The
position is kept in global terms, so a run can resume with a different ``dp_size`` and still see the same global
order.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from rlad_megatron.data.prompt_dataset import DatasetError, PromptDataset, PromptExample


def _fingerprint(dataset: PromptDataset) -> str:
    h = hashlib.sha256()
    for e in dataset.examples:
        h.update(e.id.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


class PromptStream:
    """Batches of :class:`PromptExample` for one data-parallel rank.

    batch_size: prompts per step on this rank (the global batch is ``batch_size * dp_size``).
    seed: the shuffling seed; epoch ``e`` uses the permutation drawn from ``(seed, e)``.
    shuffle: when False, every epoch walks the dataset in file order (evaluation, debugging).
    """

    def __init__(self, dataset: PromptDataset, batch_size: int, seed: int = 0, dp_rank: int = 0, dp_size: int = 1,
                 shuffle: bool = True) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"need 0 <= dp_rank < dp_size, got dp_rank={dp_rank}, dp_size={dp_size}")
        global_batch = batch_size * dp_size
        if len(dataset) < global_batch:
            raise DatasetError(f"data.train_files: {dataset.report.source} has {len(dataset)} usable prompts, fewer "
                               f"than one global batch ({batch_size} per rank x {dp_size} ranks = {global_batch}, "
                               "data.prompts_per_step): add prompts, or lower data.prompts_per_step")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0  # index of the next global batch's first prompt in this epoch's order
        self.steps = 0
        self._order_epoch = -1
        self._order: np.ndarray = np.arange(0)
        self._fingerprint = _fingerprint(dataset)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.dp_size

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            n = len(self.dataset)
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
            else:
                self._order = np.arange(n)
            self._order_epoch = self.epoch
        return self._order

    def next_batch(self) -> list[PromptExample]:
        """This rank's ``batch_size`` prompts of the next global batch (advances the position)."""
        if self.position + self.global_batch_size > len(self.dataset):
            self.epoch += 1
            self.position = 0
        order = self._epoch_order()
        start = self.position + self.dp_rank * self.batch_size
        idx = order[start:start + self.batch_size]
        self.position += self.global_batch_size
        self.steps += 1
        return [self.dataset.examples[int(i)] for i in idx]

    def state_dict(self) -> dict[str, Any]:
        """The resumable position (plain ints/strings: safe in any checkpoint format)."""
        return {"epoch": self.epoch, "position": self.position, "steps": self.steps, "seed": self.seed,
                "shuffle": self.shuffle, "dataset_size": len(self.dataset), "fingerprint": self._fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``. Refuses a different dataset or seed (the order would silently change)."""
        if state.get("fingerprint") != self._fingerprint or state.get("dataset_size") != len(self.dataset):
            raise ValueError(f"prompt stream state is for another dataset (size {state.get('dataset_size')}, "
                             f"fingerprint {state.get('fingerprint')}) than {self.dataset.report.source} "
                             f"(size {len(self.dataset)}, fingerprint {self._fingerprint}): same data and filters "
                             f"are needed to resume")
        if state.get("seed") != self.seed or state.get("shuffle") != self.shuffle:
            raise ValueError(f"prompt stream state has seed={state.get('seed')} shuffle={state.get('shuffle')}, "
                             f"this stream seed={self.seed} shuffle={self.shuffle}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.steps = int(state["steps"])
