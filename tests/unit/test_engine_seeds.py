"""Seeds of the rollout engines (``rlad_megatron.rollout.seeds``): one engine seed per data-parallel replica (R1),
and request seeds that the tensor-parallel shards of one engine agree on (R2). The vLLM facts they rest on are
checked against the installed vLLM's source, so an upstream change fails here."""
from __future__ import annotations

import dataclasses
import inspect
import types

import pytest

from rlad_megatron.config import RunConfig
from rlad_megatron.engine_api import SamplingSettings
from rlad_megatron.config.engine import VLLMEngineConfig
from rlad_megatron.rollout.seeds import engine_request_seed, replica_seed
from rlad_megatron.trainer.setup.engine_settings import engine_config


def test_every_replica_gets_its_own_engine_seed():
    seeds = [replica_seed(7, r) for r in range(64)]
    assert seeds[0] == 7 and len(set(seeds)) == 64
    assert replica_seed(7, 3) == replica_seed(7, 3) != replica_seed(8, 3)
    c = RunConfig()
    c.trainer.seed = 7
    assert engine_config(c, "m", cuda=True, replica=0).seed == 7
    assert engine_config(c, "m", cuda=True, replica=5).seed == replica_seed(7, 5) != 7
    with pytest.raises(ValueError, match="replica"):
        replica_seed(7, -1)


def test_replica_seed_is_vllms_own_data_parallel_derivation():
    """vLLM's set_random_seed(seed, data_parallel_index) seeds np.random as replica_seed does."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("vllm")
    from vllm.utils.torch_utils import set_random_seed

    for replica in (1, 2, 5):
        set_random_seed(11, replica)
        theirs = np.random.randint(0, 1 << 30, size=4).tolist()
        np.random.seed(replica_seed(11, replica))
        assert np.random.randint(0, 1 << 30, size=4).tolist() == theirs


def test_vllm_facts_the_seeds_rest_on():
    """R1: the GPU worker seeds its generators with the engine seed and no data-parallel index; R2: model runner V2
    draws an unseeded request's seed from the process-wide np.random."""
    pytest.importorskip("vllm")
    from vllm.v1.worker import gpu_worker
    from vllm.v1.worker.gpu.sample.states import SamplingStates

    assert "set_random_seed(self.model_config.seed)" in inspect.getsource(gpu_worker.Worker)
    add_request = inspect.getsource(SamplingStates.add_request)
    assert "seed = sampling_params.seed" in add_request and "np.random.randint" in add_request


class _Shard:
    """A ``VLLMEngine`` without vLLM's engine: ``generate`` records the SamplingParams it would send."""

    def __init__(self, seed: int, tp: int):
        from rlad_megatron.rollout.vllm_engine import VLLMEngine

        self.engine = VLLMEngine.__new__(VLLMEngine)
        self.engine.__dict__.update(
            config=VLLMEngineConfig(model="m", seed=seed, executor="external_launcher", tensor_parallel_size=tp),
            sharded=True, _closed=False, _asleep=False, _sync_in_progress=None,
            _seeds_every_request=tp > 1, _unseeded_calls=0)
        self.sent: list[list] = []
        self.engine._engine_generate = self._generate

    def _generate(self, prompts, params):
        self.sent.append([p.seed for p in params])
        out = types.SimpleNamespace(token_ids=[5], logprobs=[{5: types.SimpleNamespace(logprob=-0.1)}],
                                    finish_reason="length", text="", index=0)
        return [types.SimpleNamespace(outputs=[out]) for _ in prompts]

    def seeds(self, sampling: SamplingSettings) -> list:
        self.engine.generate([[1, 2], [3, 4]], sampling)
        return self.sent[-1]


def test_sharded_engine_seeds_unseeded_requests_alike_on_its_shards():
    pytest.importorskip("vllm")
    unseeded = SamplingSettings(n=2, max_tokens=1)
    tp0, tp1, other_replica = _Shard(7, 2), _Shard(7, 2), _Shard(replica_seed(7, 1), 2)
    first = tp0.seeds(unseeded)
    assert None not in first and first == tp1.seeds(unseeded)  # shards agree
    assert first[1] - first[0] == 2  # prompt j's responses: seed + j * n + i
    assert tp0.seeds(unseeded) == tp1.seeds(unseeded) != first  # the next call draws new seeds, alike
    assert other_replica.seeds(unseeded) != first
    assert tp0.seeds(dataclasses.replace(unseeded, seed=100)) == [100, 102]  # a caller's seed is kept
    assert _Shard(7, 1).seeds(unseeded) == [None, None]  # one shard: vLLM's own stream
    assert engine_request_seed(7, 0) == engine_request_seed(7, 0) < (1 << 62)
