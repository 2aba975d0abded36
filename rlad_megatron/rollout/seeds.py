"""The seeds of the rollout engines: one per data-parallel replica, and request seeds every shard of an engine agrees
on.

vLLM seeds its worker's process-wide generators (``random``, ``np.random``, torch) with the engine seed when it
starts (``vllm/v1/worker/gpu_worker.py``: ``set_random_seed(self.model_config.seed)``, without a data-parallel
index under the external launcher). A request without a seed then draws its sampling seed from that state: the GPU
model runner V2 (vLLM 0.32's default on GPUs) in ``SamplingStates.add_request``
(``vllm/v1/worker/gpu/sample/states.py``: ``np.random.randint`` when ``sampling_params.seed is None``). Hence:

- R1: replicas with the same engine seed draw the same request seeds, so their unseeded samples are correlated.
  :func:`replica_seed` gives each replica its own (vLLM's own derivation for data-parallel engines,
  ``set_random_seed(seed, data_parallel_index)``: replica 0 keeps the run's seed).
- R2: the tensor-parallel shards of one engine (one process each under the external launcher) each sample from the
  full logits with their own seed tensor, and nothing makes them agree but equal generator states: anything in a
  shard's process that draws from ``np.random`` between requests (the learner, a data loader) would make the
  shards sample different tokens, then schedule different work, and the NCCL calls hang. A sharded engine
  therefore seeds every request itself (:func:`engine_request_seed`), from values equal on its shards.
"""
from __future__ import annotations

import numpy as np

_SEED_MASK = (1 << 62) - 1  # room for the per-response offsets vLLM and generate() add


def replica_seed(seed: int, replica: int) -> int:
    """The engine seed of data-parallel replica ``replica`` in a run seeded ``seed`` (replica 0: ``seed``)."""
    if replica < 0:
        raise ValueError(f"replica_seed: replica={replica} must be >= 0")
    if replica == 0:
        return seed
    return int(np.random.SeedSequence((seed, replica)).generate_state(1)[0])


def engine_request_seed(engine_seed: int, call: int) -> int:
    """The base request seed of an engine's ``call``-th unseeded ``generate`` (the engine numbers its calls): equal
    on every shard of the engine, distinct across calls and across engines with distinct seeds."""
    return int(np.random.SeedSequence((engine_seed, call, 0x5EED)).generate_state(2, dtype=np.uint64)[0] & _SEED_MASK)
