"""Teacher trust wired through the trainer (issue 33): each prompt's ``teacher_pass_rate`` rides on every response of
its group from the scored rollouts to the batch (and through a checkpoint of a batch generated ahead), rows move
with it, and a training file missing it on any row is refused before the run starts (naming the file, the row and
``rlad-megatron teacher-trust``)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from rlad_megatron.config import load_run_config
from rlad_megatron.data.prompt_dataset import TEACHER_PASS_RATE
from rlad_megatron.engine_api import Completion, PromptResult, SamplingSettings
from rlad_megatron.learner.balance import concat_batches
from rlad_megatron.rewards.guard import RewardGuard
from rlad_megatron.tasks.registry import get_task
from rlad_megatron.trainer.setup.record_checks import record_problems
from rlad_megatron.trainer.step.rollouts import generate_and_score, pack_rollouts, to_sequence_batch, unpack_rollouts


class _Example:
    def __init__(self, record, ids):
        self.record, self.prompt_token_ids = record, ids


class _Engine:
    """Every prompt gets the same two completions: a right and a wrong answer to 1+1."""

    weight_version = 3

    def generate(self, prompts, sampling):
        texts = ["1+1=2\n#### 2", "1+1=3\n#### 3"]
        return [PromptResult(list(p), [Completion([10 + j] * (j + 2), [-0.5] * (j + 2), "stop", t)
                                       for j, t in enumerate(texts[:sampling.n])]) for p in prompts]


def _rollouts(rates, route=None):
    task = get_task("arithmetic")
    records = []
    for i, rate in enumerate(rates):
        rec = {"id": f"p{i}", "prompt": "1+1=", "answer": "2", "route": "b" if i % 2 else "a"}
        if rate is not None:
            rec[TEACHER_PASS_RATE] = rate
        records.append(rec)
    guard = RewardGuard(task.reward, backend="inline")
    try:
        return generate_and_score(_Engine(), guard, [_Example(r, [1, 2 + i]) for i, r in enumerate(records)],
                                  SamplingSettings(n=2, max_tokens=8), route)
    finally:
        guard.close()


def test_pass_rates_ride_on_every_response_of_their_prompt():
    rollouts = _rollouts([0.0, 0.75, 1.0])
    assert rollouts.teacher_pass_rates == [0.0, 0.0, 0.75, 0.75, 1.0, 1.0] and rollouts.teachers == []
    batch, _ = to_sequence_batch(rollouts, pad_id=0, skip_uniform_groups=False, pass_rates=True)
    assert batch.teacher_pass_rate.dtype == torch.float64
    assert batch.teacher_pass_rate.tolist() == [0.0, 0.0, 0.75, 0.75, 1.0, 1.0]
    assert batch.teacher_index is None
    plain, _ = to_sequence_batch(rollouts, pad_id=0, skip_uniform_groups=False)  # trust off: nothing carried
    assert plain.teacher_pass_rate is None
    # rows move with their rate: micro-batches (select) and the DP rebalance (concat + select)
    picked = batch.select(torch.tensor([5, 0, 3]))
    assert picked.teacher_pass_rate.tolist() == [1.0, 0.0, 0.75]
    both = concat_batches([batch.select(slice(0, 2)), batch.select(slice(2, 6))], pad_id=0)
    assert torch.equal(both.teacher_pass_rate, batch.teacher_pass_rate)


def test_routes_ride_on_every_response_of_their_prompt():
    rollouts = _rollouts([None, None, None], route=lambda rec: {"a": 0, "b": 1}[rec["route"]])
    assert rollouts.teachers == [0, 0, 1, 1, 0, 0]
    assert all(math.isnan(r) for r in rollouts.teacher_pass_rates)
    batch, _ = to_sequence_batch(rollouts, pad_id=0, skip_uniform_groups=False)
    assert batch.teacher_index.tolist() == [0, 0, 1, 1, 0, 0]


def test_missing_rate_at_the_batch_is_an_error_not_a_nan_loss():
    rollouts = _rollouts([0.5, None])
    with pytest.raises(ValueError, match="no teacher_pass_rate.*rlad-megatron teacher-trust"):
        to_sequence_batch(rollouts, pad_id=0, skip_uniform_groups=False, pass_rates=True)


def test_checkpointed_batch_keeps_its_rates_and_routes_and_old_ones_load():
    rollouts = _rollouts([0.25, 1.0], route=lambda rec: 1)
    back = unpack_rollouts(pack_rollouts(rollouts))
    assert back == rollouts
    old = pack_rollouts(rollouts)
    del old["teacher_pass_rates"], old["teachers"]  # a checkpoint written before these fields
    again = unpack_rollouts(old)
    assert again.teacher_pass_rates == [] and again.teachers == [] and again.rewards == rollouts.rewards


def _config(tmp_path, rows, *overrides):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_run_config(None, ["model.student=/s", "model.teacher=/t", f"data.train_files={data}",
                                  *overrides]), data


def test_a_row_without_a_rate_is_refused_before_the_run(tmp_path):
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1), TEACHER_PASS_RATE: 0.5} for i in range(9)]
    del rows[7][TEACHER_PASS_RATE]  # beyond the first rows the generic data check reads
    config, data = _config(tmp_path, rows, "loss.teacher_trust=gate")
    problems = record_problems(config)
    assert len(problems) == 1
    assert problems[0].startswith(f"data.train_files: {data}: row 7 (0-based; line 8 of a .jsonl): no "
                                  f"'teacher_pass_rate' field, which loss.teacher_trust=gate needs")
    assert "rlad-megatron teacher-trust --teacher /t" in problems[0]
    assert record_problems(_config(tmp_path, rows)[0]) == []  # trust off: not needed
    rows[7][TEACHER_PASS_RATE] = 0.0
    assert record_problems(_config(tmp_path, rows, "loss.teacher_trust=scale")[0]) == []


def test_the_rate_may_come_through_data_fields(tmp_path):
    rows = [{"prompt": "1+1=", "answer": "2", "meta": {"rate": 0.5}}]
    config, _ = _config(tmp_path, rows, "loss.teacher_trust=gate", "data.fields.teacher_pass_rate=meta.rate")
    assert record_problems(config) == []


def test_train_cli_exits_2_naming_the_row(tmp_path, capsys):
    from rlad_megatron.cli import main
    from rlad_megatron.testing.tiny_run import prepare_models_and_data

    paths = prepare_models_and_data(tmp_path / "m", num_prompts=4)
    rows = [json.loads(line) for line in open(paths["train"])]
    for r in rows[:3]:
        r[TEACHER_PASS_RATE] = 1.0
    data = tmp_path / "rated.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = main(["train", f"model.student={paths['student']}", f"model.teacher={paths['teacher']}",
               f"data.train_files={data}", "loss.teacher_trust=gate", f"trainer.output_dir={tmp_path / 'out'}"])
    out = capsys.readouterr()
    assert rc == 2
    text = out.out + out.err
    assert f"{data}: row 3" in text and "rlad-megatron teacher-trust" in text and "Traceback" not in text
