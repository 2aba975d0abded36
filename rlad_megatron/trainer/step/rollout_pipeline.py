"""Where each step's rollouts come from: generated at the top of the step (``rollout.mode=sync``), or one step ahead
by the engine process while the learner trains (``rollout.mode=async``, docs/async_rollouts.md).

    pipeline = RolloutPipeline(engine, guard, prompts, sampling_for, ahead=True, max_staleness=1, share=...)
    rollouts, metrics = pipeline.take(step, learner_version)  # batch ``step``; in async mode asks for ``step + 1``
    ...train on rollouts...                                    # the engine process generates meanwhile
    pipeline.finish_step()                                     # collect batch ``step + 1``; the engine is idle again
    ...weight sync, eval, checkpoint (pipeline.state_dict() holds the collected batch)...

Every rank calls every method in the same order (the prompt stream advances on all of them); only ranks holding an
engine talk to it, and the batch is shared over the model-parallel group (``share``) as soon as it is scored, so
that every rank takes the same decisions. A batch whose weight version lags the learner's by more than
``max_staleness`` is dropped (counted in ``rollout/stale_dropped``) and its prompts are generated again with the
current weights: the prompt stream is rewound to where it stood before them, so the data order never changes.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, Sequence

from rlad_megatron.engine_api import SamplingSettings
from rlad_megatron.trainer.step.rollouts import (
    Rollouts, Route, generate_and_score, pack_rollouts, score_results, unpack_rollouts,
)


@dataclasses.dataclass
class _Batch:
    """A batch generated ahead: for step ``step``, from the prompts the stream gave at ``stream_before``."""

    step: int
    stream_before: dict[str, Any]
    examples: Sequence[Any] = ()
    rollouts: Rollouts | None = None
    arrival: "_Arrival | None" = None


class _Arrival(threading.Thread):
    """Waits for the engine's answer to a request made ahead, in a thread of its own, and hands it to
    ``on_generated`` as soon as it is there (while the learner's main thread trains)."""

    def __init__(self, engine: Any, on_generated: Callable[[list], None]) -> None:
        super().__init__(name="rlad-rollout-arrival", daemon=True)
        self.engine, self.on_generated = engine, on_generated
        self.result: tuple[list, int] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.engine.collect_generate()
            self.on_generated(self.result[0])
        except BaseException as exc:  # re-raised on the main thread by collect()
            self.error = exc

    def collect(self) -> tuple[list, int]:
        self.join()
        if self.error is not None:
            raise self.error
        return self.result


@dataclasses.dataclass
class HeldBatchState:
    """A checkpoint's record of the batch generated ahead: saves and loads itself."""

    step: int
    """The step it was generated for."""
    stream_before: dict[str, Any]
    """The prompt stream's position before its prompts (to generate them again)."""
    owner: Any = None
    """The data-parallel rank and size that generated it (another layout generates the batch again)."""
    rollouts: dict[str, Any] | None = None
    """The samples (:func:`pack_rollouts`; older checkpoints: plain lists), None on ranks that do not score."""

    @classmethod
    def of(cls, batch: _Batch, owner: Any) -> "HeldBatchState":
        return cls(step=batch.step, stream_before=batch.stream_before, owner=owner,
                   rollouts=None if batch.rollouts is None else pack_rollouts(batch.rollouts))

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "stream_before": self.stream_before, "owner": self.owner,
                "rollouts": self.rollouts}

    @classmethod
    def from_dict(cls, state: dict[str, Any] | None) -> "HeldBatchState | None":
        if state is None:
            return None
        return cls(step=int(state["step"]), stream_before=state["stream_before"], owner=state.get("owner"),
                   rollouts=state.get("rollouts"))


class RolloutPipeline:
    """Args:
        engine: this rank's rollout engine (None off the engine ranks). With ``ahead`` it must offer
            ``request_generate`` / ``collect_generate`` (the disaggregated ``RemoteVLLMEngine``).
        guard: the reward guard (None on ranks that do not score: their rollouts come from ``share``).
        prompts: the prompt stream (``next_batch``, ``state_dict``, ``load_state_dict``).
        sampling_for: ``(step, number of prompts) -> SamplingSettings`` of that step's request (its seeds).
        generate: the synchronous path, ``(examples, sampling) -> Rollouts | None`` (default: generate and score
            on ``engine``); the trainer wraps it with the engine's wake-up/sleep.
        ahead: generate batch t + 1 while the learner trains on batch t (async with ``max_staleness >= 1``).
        max_staleness: the most versions a batch may lag the learner's weights when it is taken.
        share: the leader's value on every rank of the model-parallel group (identity with one rank).
        owner: what identifies this rank's share of the data (its data-parallel rank and size): a saved batch of
            another owner (a resume with another layout) is generated again from its prompts.
        route: several teachers: ``record -> teacher index`` (each sample records its prompt's teacher).
        on_generated: on the engine rank, called with the engine's results of a batch asked ahead as soon as they
            arrive, from a thread of its own while the learner computes (the trainer gives a separate teacher's
            prefetch: the teacher pool scores batch t + 1 while the learner trains on batch t).
    """

    def __init__(self, engine: Any, guard: Any, prompts: Any, sampling_for: Callable[[int, int], SamplingSettings],
                 *, generate: Callable[[Sequence[Any], SamplingSettings], Rollouts | None] | None = None,
                 ahead: bool = False, max_staleness: int = 0, share: Callable[[Any], Any] = lambda v: v,
                 owner: Any = None, on_generated: Callable[[list], None] | None = None,
                 route: Route | None = None) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        if ahead and max_staleness < 1:
            raise ValueError("generating one batch ahead makes batches one version old: it needs max_staleness >= 1")
        if ahead and engine is not None and not engine.runs_apart:
            raise ValueError(f"asynchronous rollouts need an engine in its own process ({type(engine).__name__} "
                             "generates in the learner's process): set rollout.placement='disaggregated'")
        self.engine, self.guard, self.prompts = engine, guard, prompts
        self.sampling_for = sampling_for
        self._generate = generate or self._generate_on_engine
        self.ahead, self.max_staleness, self.share = ahead, max_staleness, share
        self.owner = owner
        self.on_generated = on_generated
        self.route = route
        self._inflight: _Batch | None = None
        self._held: _Batch | None = None
        self.dropped_total = 0

    # ------------------------------------------------------------------------------------------------ the step
    def take(self, step: int, learner_version: int) -> tuple[Rollouts | None, dict[str, float]]:
        """Batch ``step`` on every rank (``None`` only when no rank scores), and its metrics. In async mode,
        also ask the engine for batch ``step + 1`` (with the weights it holds now) before returning."""
        if self._inflight is not None:
            raise RuntimeError("RolloutPipeline.take: the previous step's request was never collected (finish_step)")
        dropped = 0
        rollouts = None
        held, self._held = self._held, None
        if held is not None:
            if held.step != step:
                raise RuntimeError(f"RolloutPipeline: the batch held for step {held.step} was taken at step {step}")
            if learner_version - held.rollouts.weight_version > self.max_staleness:
                dropped = len(held.rollouts.response_ids)
                self.prompts.load_state_dict(held.stream_before)  # its prompts again, with the current weights
            else:
                rollouts = held.rollouts
        if rollouts is None:
            examples = self.prompts.next_batch()
            rollouts = self.share(self._generate(examples, self.sampling_for(step, len(examples))))
        if self.ahead:
            self._request(step + 1)
        self.dropped_total += dropped
        metrics = {"rollout/stale_dropped": float(dropped)}
        if rollouts is not None:
            metrics["rollout/weight_version"] = float(rollouts.weight_version)
            metrics["rollout/staleness"] = float(learner_version - rollouts.weight_version)
        return rollouts, metrics

    def finish_step(self) -> float:
        """Collect the batch asked for in :meth:`take` (waiting for the engine); returns the seconds waited."""
        if self._inflight is None:
            return 0.0
        start = time.perf_counter()
        batch, self._inflight = self._inflight, None
        rollouts = None
        if self.engine is not None:
            results, version = (batch.arrival.collect() if batch.arrival is not None
                                else self.engine.collect_generate())
            if self.guard is not None:
                rollouts = score_results(self.guard, batch.examples, results,
                                         self.sampling_for(batch.step, len(batch.examples)).n, version, self.route)
        batch.rollouts = self.share(rollouts)
        batch.examples = ()
        self._held = batch
        return time.perf_counter() - start

    def _request(self, step: int) -> None:
        before = self.prompts.state_dict()
        examples = self.prompts.next_batch()
        arrival = None
        if self.engine is not None:
            self.engine.request_generate([ex.prompt_token_ids for ex in examples],
                                         self.sampling_for(step, len(examples)))
            if self.on_generated is not None:
                arrival = _Arrival(self.engine, self.on_generated)
                arrival.start()
        self._inflight = _Batch(step=step, stream_before=before, examples=examples, arrival=arrival)

    def _generate_on_engine(self, examples: Sequence[Any], sampling: SamplingSettings) -> Rollouts | None:
        if self.engine is None:
            return None
        return generate_and_score(self.engine, self.guard, examples, sampling, self.route)

    # ------------------------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The batch generated ahead (its samples as tensors: the checkpoint writes them to the rank's safetensors
        file, the rest to its JSON trainer state), or nothing. Only between steps, after :meth:`finish_step`: a
        batch still in flight cannot be saved."""
        if self._inflight is not None:
            raise RuntimeError("RolloutPipeline.state_dict: a request is in flight; call finish_step() first")
        held = None if self._held is None else HeldBatchState.of(self._held, self.owner)
        return {"held": None if held is None else held.to_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the batch generated ahead (checked against the learner's version at :meth:`take`)."""
        held = HeldBatchState.from_dict((state or {}).get("held"))
        self._inflight = None
        self._held = None
        if held is not None and held.rollouts is not None and held.owner == self.owner:
            self._held = _Batch(step=held.step, stream_before=held.stream_before,
                                rollouts=unpack_rollouts(held.rollouts))
        elif held is not None:  # another layout's batch: generate its prompts again at the next step
            self.prompts.load_state_dict(held.stream_before)

    def close(self) -> None:
        """Forget a request still in flight (a step that failed): the engine's shutdown drains its answer (a
        thread waiting for it first)."""
        if self._inflight is not None and self._inflight.arrival is not None:
            self._inflight.arrival.join()
        self._inflight = None
