"""The rollout pipeline's logic (trainer/step/rollout_pipeline.py) with a small fake engine: which batch each step gets,
with which weight version, what is asked ahead, what a checkpoint holds, and what is dropped as stale."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rlad_megatron.config import ConfigError, RolloutConfig
from rlad_megatron.engine_api import Completion, PromptResult, SamplingSettings
from rlad_megatron.trainer.setup.engine_settings import engine_cpu_cores
from rlad_megatron.trainer.step.rollout_pipeline import RolloutPipeline


@dataclasses.dataclass
class _Example:
    prompt_token_ids: list[int]
    record: dict


class _Stream:
    """Prompt k is ``[k]``; two prompts a batch."""

    def __init__(self) -> None:
        self.position = 0

    def next_batch(self):
        batch = [_Example([k], {"k": k}) for k in (self.position, self.position + 1)]
        self.position += 2
        return batch

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


class _Engine:
    """Answers prompt ``[k]`` with response ``[k, version]`` (log-prob -version); records every request."""

    runs_apart = True

    def __init__(self) -> None:
        self.weight_version = 1
        self.requests: list[tuple[list[list[int]], int, int]] = []  # (prompts, seed, version when asked)
        self._pending = None

    def _results(self, prompts, sampling):
        return [PromptResult(list(p), [Completion([p[0], self.weight_version], [-1.0 * self.weight_version] * 2,
                                                  "stop", str(p[0]))] * sampling.n) for p in prompts]

    def generate(self, prompts, sampling):
        self.requests.append(([list(p) for p in prompts], sampling.seed, self.weight_version))
        return self._results(prompts, sampling)

    def request_generate(self, prompts, sampling):
        assert self._pending is None, "one request at a time"
        self.requests.append(([list(p) for p in prompts], sampling.seed, self.weight_version))
        self._pending = (self._results(prompts, sampling), self.weight_version)

    def collect_generate(self):
        out, self._pending = self._pending, None
        return out


class _Guard:
    @dataclasses.dataclass
    class _Stats:
        errors: int = 0
        timeouts: int = 0

    @dataclasses.dataclass
    class _Score:
        score: float
        correct: bool
        format_ok: bool = True

    def __init__(self) -> None:
        self.stats = self._Stats()

    def score_many(self, items):
        return [self._Score(float(text == "0"), text == "0") for text, _ in items]


def _sampling(step: int, prompts: int) -> SamplingSettings:
    return SamplingSettings(n=2, max_tokens=4, seed=1000 * step)


def _pipeline(engine, stream, **kw) -> RolloutPipeline:
    return RolloutPipeline(engine, _Guard(), stream, _sampling, **kw)


def _prompts(rollouts) -> list[int]:
    return sorted({p[0] for p in rollouts.prompt_ids})


def _run(pipeline: RolloutPipeline, engine: _Engine, steps: range, learner: dict) -> list[tuple]:
    """The trainer's order: take, (train), finish_step, sync (the learner's next version reaches the engine)."""
    seen = []
    for step in steps:
        rollouts, metrics = pipeline.take(step, learner["version"])
        seen.append((step, _prompts(rollouts), rollouts.weight_versions, metrics))
        pipeline.finish_step()
        learner["version"] += 1
        engine.weight_version = learner["version"]
    return seen


def test_sync_generates_each_batch_at_its_step_with_the_current_weights() -> None:
    engine = _Engine()
    seen = _run(_pipeline(engine, _Stream()), engine, range(3), {"version": 1})
    assert [s[1] for s in seen] == [[0, 1], [2, 3], [4, 5]]
    assert [s[2] for s in seen] == [[1] * 4, [2] * 4, [3] * 4]
    assert [s[3]["rollout/staleness"] for s in seen] == [0.0, 0.0, 0.0]
    assert [r[1:] for r in engine.requests] == [(0, 1), (1000, 2), (2000, 3)]


def test_async_takes_the_batch_generated_during_the_previous_step_one_version_old() -> None:
    engine = _Engine()
    pipeline = _pipeline(engine, _Stream(), ahead=True, max_staleness=1)
    seen = _run(pipeline, engine, range(4), {"version": 1})
    # the same prompts, in the same order and with the same seeds as the synchronous run
    assert [s[1] for s in seen] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [r[1] for r in engine.requests] == [0, 1000, 2000, 3000, 4000]
    # step 0 is generated at once with version 1; batch t >= 1 was asked during step t - 1, with version t
    assert [s[2][0] for s in seen] == [1, 1, 2, 3]
    assert [s[3]["rollout/staleness"] for s in seen] == [0.0, 1.0, 1.0, 1.0]
    assert [s[3]["rollout/stale_dropped"] for s in seen] == [0.0] * 4
    # the engine's log-probs travel with the samples (the loss's behaviour policy)
    assert engine.requests[-1][0] == [[8], [9]] and pipeline.dropped_total == 0


def _through_a_checkpoint(state: dict) -> dict:
    """What a checkpoint gives back: the tensors through a safetensors file, the rest through JSON
    (trainer/checkpoints/state.py's split_tensors / join_tensors)."""
    import tempfile

    from safetensors.torch import load_file, save_file

    from rlad_megatron.trainer.checkpoints.state import join_tensors, split_tensors

    tensors: dict = {}
    text = json.dumps(split_tensors(state, tensors))
    with tempfile.TemporaryDirectory() as folder:
        save_file(tensors, f"{folder}/t.safetensors")
        return join_tensors(json.loads(text), load_file(f"{folder}/t.safetensors"))


def test_rollouts_pack_into_tensors_and_back_exactly() -> None:
    from rlad_megatron.trainer.step.rollouts import Rollouts, pack_rollouts, unpack_rollouts

    rollouts = Rollouts(prompt_ids=[[1, 2], [1, 2], [7], [7]], response_ids=[[5, 6, 3], [], [4], [9, 9]],
                        response_logprobs=[[-0.1, -1e-9, -2.5], [], [-0.30000000000000004], [-7.25, -1 / 3]],
                        truncated=[False, True, False, False], rewards=[1.0, 0.0, 0.5, 1 / 3],
                        correct=[True, False, False, True], format_ok=[True, False, True, True], reward_errors=1,
                        group_size=2, weight_versions=[4, 4, 4, 4])
    packed = _through_a_checkpoint({"rollouts": pack_rollouts(rollouts)})["rollouts"]
    assert packed["response_ids"]["values"].tolist() == [5, 6, 3, 4, 9, 9]
    assert unpack_rollouts(packed) == rollouts  # every float exactly (float64), empty responses kept
    assert unpack_rollouts(dataclasses.asdict(rollouts)) == rollouts  # checkpoints written before: plain lists
    packed["prompt_ids"]["lengths"][0] = 3
    with pytest.raises(ValueError, match="prompt_ids has 6 values but its lengths sum to 7"):
        unpack_rollouts(packed)


def test_a_checkpoint_holds_the_batch_generated_ahead_and_resume_continues_exactly() -> None:
    engine, stream = _Engine(), _Stream()
    pipeline = _pipeline(engine, stream, ahead=True, max_staleness=1, owner=[0, 1])
    reference = _run(pipeline, engine, range(4), {"version": 1})

    inflight = _pipeline(_Engine(), _Stream(), ahead=True, max_staleness=1)
    inflight.take(0, 1)
    with pytest.raises(RuntimeError, match="in flight"):  # a save waits for the batch first (finish_step)
        inflight.state_dict()

    engine3, stream3 = _Engine(), _Stream()
    before = _pipeline(engine3, stream3, ahead=True, max_staleness=1, owner=[0, 1])
    _run(before, engine3, range(2), {"version": 1})
    saved = _through_a_checkpoint({"pipeline": before.state_dict(), "data": stream3.state_dict()})
    assert saved["pipeline"]["held"]["step"] == 2

    engine4, stream4 = _Engine(), _Stream()  # a fresh process: its engine starts again, synced to version 3
    engine4.weight_version = 3
    stream4.load_state_dict(saved["data"])
    resumed = _pipeline(engine4, stream4, ahead=True, max_staleness=1, owner=[0, 1])
    resumed.load_state_dict(saved["pipeline"])
    after = _run(resumed, engine4, range(2, 4), {"version": 3})
    assert after == reference[2:]


def test_a_batch_older_than_max_staleness_is_dropped_counted_and_its_prompts_generated_again() -> None:
    engine, stream = _Engine(), _Stream()
    ahead = _pipeline(engine, stream, ahead=True, max_staleness=1, owner=[0, 1])
    _run(ahead, engine, range(2), {"version": 1})
    saved = _through_a_checkpoint({"pipeline": ahead.state_dict(), "data": stream.state_dict()})

    engine2, stream2 = _Engine(), _Stream()  # resumed with rollout.mode=sync (max_staleness 0)
    engine2.weight_version = 3
    stream2.load_state_dict(saved["data"])
    sync = _pipeline(engine2, stream2, owner=[0, 1])
    sync.load_state_dict(saved["pipeline"])
    seen = _run(sync, engine2, range(2, 4), {"version": 3})
    assert seen[0][3]["rollout/stale_dropped"] == 4.0 and sync.dropped_total == 4
    assert [s[1] for s in seen] == [[4, 5], [6, 7]]  # the dropped batch's prompts again, then the next ones
    assert [s[2][0] for s in seen] == [3, 4] and seen[0][3]["rollout/staleness"] == 0.0


def test_a_batch_saved_by_another_layout_is_generated_again_not_taken() -> None:
    engine, stream = _Engine(), _Stream()
    ahead = _pipeline(engine, stream, ahead=True, max_staleness=1, owner=[0, 2])
    _run(ahead, engine, range(1), {"version": 1})
    saved = _through_a_checkpoint(ahead.state_dict())
    engine2, stream2 = _Engine(), _Stream()
    engine2.weight_version = 2
    stream2.load_state_dict({"position": 4})
    other = _pipeline(engine2, stream2, ahead=True, max_staleness=1, owner=[0, 1])
    other.load_state_dict(saved)
    rollouts, metrics = other.take(1, 2)
    assert _prompts(rollouts) == [2, 3] and metrics["rollout/staleness"] == 0.0


def test_the_batch_asked_ahead_is_handed_over_as_soon_as_it_arrives() -> None:
    """``on_generated`` gets the engine's results from the arrival thread, before the step's end collects them (the
    trainer asks the teacher pool there); an error in it reaches the main thread at finish_step."""
    import threading

    engine, arrived = _Engine(), []
    seen = threading.Event()

    def on_generated(results) -> None:
        arrived.append([r.prompt_token_ids + r.completions[0].token_ids for r in results])
        seen.set()

    pipeline = _pipeline(engine, _Stream(), ahead=True, max_staleness=1, on_generated=on_generated)
    pipeline.take(0, 1)
    assert seen.wait(10) and arrived == [[[2, 2, 1], [3, 3, 1]]]  # batch 1, while "step 0 trains"
    pipeline.finish_step()
    rollouts, _ = pipeline.take(1, 2)
    assert _prompts(rollouts) == [2, 3]
    pipeline.finish_step()

    def broken(results) -> None:
        raise OSError("the teacher pool went away")

    failing = _pipeline(_Engine(), _Stream(), ahead=True, max_staleness=1, on_generated=broken)
    failing.take(0, 1)
    with pytest.raises(OSError, match="teacher pool went away"):
        failing.finish_step()


def test_pipeline_refuses_what_cannot_work() -> None:
    class _InProcess:
        runs_apart = False

        def generate(self, prompts, sampling):
            return []

    with pytest.raises(ValueError, match="disaggregated"):
        RolloutPipeline(_InProcess(), _Guard(), _Stream(), _sampling, ahead=True, max_staleness=1)
    with pytest.raises(ValueError, match="max_staleness >= 1"):
        RolloutPipeline(_Engine(), _Guard(), _Stream(), _sampling, ahead=True, max_staleness=0)
    pipeline = _pipeline(_Engine(), _Stream(), ahead=True, max_staleness=1)
    pipeline.take(0, 1)
    with pytest.raises(RuntimeError, match="finish_step"):
        pipeline.take(1, 1)


def test_rollout_mode_config_is_validated_with_what_to_set() -> None:
    RolloutConfig(mode="async", placement="disaggregated", max_staleness=0).validate()
    with pytest.raises(ConfigError, match="rollout.placement=disaggregated"):
        RolloutConfig(mode="async").validate()
    with pytest.raises(ConfigError, match="'sync' or 'async'"):
        RolloutConfig(mode="later").validate()
    with pytest.raises(ConfigError, match="max_staleness"):
        RolloutConfig(mode="async", placement="disaggregated", max_staleness=-1).validate()
    with pytest.raises(ConfigError, match="rollout.temperature=1"):
        RolloutConfig(mode="async", placement="disaggregated", temperature=0.7).validate()
    with pytest.raises(ConfigError, match="engine_cpus"):
        RolloutConfig(engine_cpus=1).validate()


def test_engine_cpus_are_the_last_cores_and_leave_the_learner_one() -> None:
    assert engine_cpu_cores(0, {0, 1}) == ()
    assert engine_cpu_cores(1, {0, 1}) == (1,)
    assert engine_cpu_cores(2, {0, 3, 5, 7}) == (5, 7)
    with pytest.raises(RuntimeError, match="engine_cpus=2"):
        engine_cpu_cores(2, {0, 1})


def test_a_trainer_state_naming_a_missing_tensor_is_refused_as_corrupt() -> None:
    from rlad_megatron.checkpoint_files import CheckpointCorrupt
    from rlad_megatron.trainer.checkpoints.state import join_tensors, split_tensors

    tensors: dict = {}
    state = split_tensors({"a": [1, {"b": torch.ones(2)}], "c": "x"}, tensors)
    assert state == {"a": [1, {"b": {"__tensor__": "a.1.b"}}], "c": "x"} and list(tensors) == ["a.1.b"]
    with pytest.raises(CheckpointCorrupt, match="'a.1.b'"):
        join_tensors(state, {})
