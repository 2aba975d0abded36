"""Several teachers (issue 33): the config (teacher.teachers, route_field, default) and its errors naming the key,
the routing rule, the training rows checked before the run, the routed scoring (each teacher scores only its own
rows, in the batch's order), the per-teacher metrics against a plain reference, the teacher weight composed with
trust in the loss, and the memory plan counting every teacher. One teacher stays today's path."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlad_megatron.cli import main
from rlad_megatron.config import ConfigError, LossConfig, load_run_config, teacher_models
from rlad_megatron.learner.sequences import SequenceBatch
from rlad_megatron.loss import Denominators, compute_policy_loss, local_denominators
from rlad_megatron.loss.teacher_metrics import per_teacher_stats, route_shares
from rlad_megatron.loss.metrics import MetricAccumulator
from rlad_megatron.memory_plan import plan_memory
from rlad_megatron.placement import ModelShape
from rlad_megatron.teacher import RoutedTeachers, Teacher, TeacherRouter
from rlad_megatron.tiny.chat_models import LLAMA3_STYLE_TEMPLATE, make_bigram_chat_model
from rlad_megatron.trainer.setup.checks import run_problems
from rlad_megatron.trainer.setup.record_checks import record_problems

TWO = "teacher.teachers=[{name: math, model: /m/math}, {name: logic, model: /m/logic, source: vllm, weight: 0.5}]"
BASE = ["model.student=/s", "data.train_files=a.jsonl"]


def _config(*overrides):
    return load_run_config(None, BASE + list(overrides))


# ------------------------------------------------------------------------------------------------------ config
def test_teachers_from_the_command_line_and_yaml(tmp_path):
    c = _config(TWO, "teacher.route_field=domain", "teacher.default=math")
    assert [(t.name, t.model, t.source, t.weight) for t in c.teacher.teachers] == [
        ("math", "/m/math", "megatron", 1.0), ("logic", "/m/logic", "vllm", 0.5)]
    assert [key for key, _ in teacher_models(c)] == ["teacher.teachers[0].model", "teacher.teachers[1].model"]
    (tmp_path / "run.yaml").write_text(
        "model: {student: /s}\ndata: {train_files: [a.jsonl]}\n"
        "teacher: {teachers: [{name: a, model: models/a}, {name: b, model: /abs/b}], route_field: t}\n")
    y = load_run_config(tmp_path / "run.yaml")
    assert [t.model for t in y.teacher.teachers] == [str(tmp_path / "models/a"), "/abs/b"]  # from the file's folder
    # the config a run records (and a resume reads back) keeps the teachers
    from rlad_megatron.config import run_config_from_dict, run_config_to_dict

    assert run_config_from_dict(run_config_to_dict(c)).teacher.teachers == c.teacher.teachers
    # one teacher: exactly today's (model.teacher, teacher.source)
    one = _config("model.teacher=/t", "teacher.source=vllm")
    assert not one.teacher.several()
    assert [(k, m.name, m.model, m.source, m.weight) for k, m in teacher_models(one)] == [
        ("model.teacher", "teacher", "/t", "vllm", 1.0)]


@pytest.mark.parametrize("overrides,message", [
    ([TWO], r"^several teachers \(teacher.teachers\) need a routing rule: set teacher.route_field"),
    ([TWO, "teacher.default=physics"], r"^teacher.default='physics' is not one of teacher.teachers' names"),
    (["teacher.teachers=[{name: a, model: /a}, {name: a, model: /b}]", "teacher.default=a"],
     r"^teacher.teachers\[1\].name='a': two teachers have this name"),
    (["teacher.teachers=[{name: 'a b', model: /a}]", "teacher.default=a"], r"^teacher.teachers\[0\].name='a b'"),
    (["teacher.teachers=[{name: a}]", "teacher.default=a"], r"^teacher.teachers\[0\].model: give the teacher's"),
    (["teacher.teachers=[{name: a, model: /a, weight: 1.5}]", "teacher.default=a"],
     r"^teacher.teachers\[0\].weight must be a number in \[0, 1\], got 1.5"),
    (["teacher.teachers=[{name: a, model: /a, source: hf}]", "teacher.default=a"],
     r"^teacher.teachers\[0\].source='hf': choose one of"),
    (["teacher.teachers=[{name: a, model: /a, colour: red}]"], r"^unknown config key teacher.teachers\[0\].colour"),
    ([TWO, "teacher.default=math", "teacher.placement=separate"],
     r"^teacher.teachers with teacher.placement=separate: several teachers in pools of their own are not supported"),
    ([TWO, "teacher.default=math", "model.teacher=/t"], r"^model.teacher=/t with teacher.teachers: give every"),
    ([TWO, "teacher.default=math", "loss.algorithm=grpo"], r"^teacher.teachers: loss.algorithm='grpo' takes no"),
    ([TWO, "teacher.default=math", "loss.algorithm=sft"], r"^teacher.teachers: loss.algorithm='sft'"),
    (["model.teacher=/t", "teacher.route_field=domain"], r"^teacher.route_field / teacher.default route prompts"),
    ([TWO, "teacher.default=math", "rollout.placement=disaggregated"],
     r"^teacher.teachers\[1\].source=vllm with rollout.placement=disaggregated"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(*overrides)


def test_defaults_document_every_new_key(capsys):
    assert main(["config", "--defaults", "teacher"]) == 0
    text = capsys.readouterr().out
    for key in ("teachers: []", "route_field: ''", "default: ''", "# - name [str", "# - model [str",
                "# - source [megatron|vllm, default megatron]", "# - weight [float, default 1.0]"):
        assert key in text, key


# ----------------------------------------------------------------------------------------------------- routing
def test_routing_by_field_with_a_default():
    router = TeacherRouter(["math", "logic"], "domain", "math")
    assert router({"domain": "logic"}) == 1 and router({"domain": "math"}) == 0
    assert router({}) == 0 and router({"domain": None}) == 0 and router({"domain": ""}) == 0
    assert "teacher 'physics', which is not one of teacher.teachers' names" in router.problem({"domain": "physics"})
    with pytest.raises(ValueError, match="record 'q7': teacher.route_field='domain' names teacher 'physics'"):
        router({"id": "q7", "domain": "physics"})
    strict = TeacherRouter(["math", "logic"], "domain")
    assert "no value in teacher.route_field='domain'" in strict.problem({"prompt": "x"})
    assert TeacherRouter(["a", "b"], "", "b")({"domain": "a"}) == 1  # no field: everything to the default
    assert TeacherRouter.of(_config("model.teacher=/t")) is None


def test_rows_that_cannot_be_routed_are_refused_before_the_run(tmp_path):
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1), "domain": "logic" if i % 2 else "math"} for i in range(8)]
    rows[6]["domain"] = "physics"
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = load_run_config(None, ["model.student=/s", f"data.train_files={data}", TWO, "teacher.route_field=domain"])
    problems = record_problems(c)
    assert problems == [f"data.train_files: {data}: row 6 (0-based; line 7 of a .jsonl): teacher.route_field="
                        "'domain' names teacher 'physics', which is not one of teacher.teachers' names "
                        "['math', 'logic']"]
    del rows[6]["domain"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "no value in teacher.route_field='domain'" in record_problems(c)[0]
    assert record_problems(load_run_config(None, ["model.student=/s", f"data.train_files={data}", TWO,
                                                  "teacher.route_field=domain", "teacher.default=math"])) == []


def test_every_teacher_must_share_the_student_tokenizer(tmp_path, capsys):
    student = make_bigram_chat_model(tmp_path / "student", {}, base=True)
    good = make_bigram_chat_model(tmp_path / "good", {})
    other = make_bigram_chat_model(tmp_path / "other", {}, template=LLAMA3_STYLE_TEMPLATE)
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+2=", "answer": "3"}\n' * 2)
    teachers = f"teacher.teachers=[{{name: a, model: {good}}}, {{name: b, model: {other}}}]"
    rc = main(["train", f"model.student={student}", f"data.train_files={data}", teachers, "teacher.default=a",
               f"trainer.output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"teacher.teachers[1].model={other} does not fit model.student={student}" in err
    ok = load_run_config(None, [f"model.student={student}", f"data.train_files={data}", "teacher.default=a",
                                f"teacher.teachers=[{{name: a, model: {good}}}, {{name: b, model: {good}}}]",
                                f"trainer.output_dir={tmp_path / 'out'}"])
    assert run_problems(ok) == []
    missing = load_run_config(None, [f"model.student={student}", f"data.train_files={data}", "teacher.default=a",
                                     f"teacher.teachers=[{{name: a, model: {good}}}, {{name: b, model: /no/such}}]",
                                     f"trainer.output_dir={tmp_path / 'out'}"])
    assert any(p.startswith("teacher.teachers[1].model") for p in run_problems(missing))


# ------------------------------------------------------------------------------------------------ routed scoring
class _FakeTeacher(Teacher):
    """Scores every position with ``offset + token id / 100`` and records the rows it was given."""

    def __init__(self, offset, last_stage=True):
        self.offset, self.last_stage, self.seen = offset, last_stage, []

    def token_logprobs(self, batch):
        self.seen.append(batch.tokens[:, 0].tolist())
        if not self.last_stage:
            return None
        return self.offset + batch.tokens[:, 1:].float() / 100


def _batch(index):
    n = len(index)
    tokens = torch.arange(n * 5).reshape(n, 5)
    return SequenceBatch(tokens=tokens, loss_mask=torch.ones(n, 4, dtype=torch.bool), advantages=torch.zeros(n),
                         rewards=torch.zeros(n), correct=torch.zeros(n, dtype=torch.bool),
                         engine_logprobs=torch.zeros(n, 4), teacher_index=torch.tensor(index))


def test_each_teacher_scores_only_its_rows_in_the_batch_order():
    a, b, c = _FakeTeacher(-1.0), _FakeTeacher(-2.0), _FakeTeacher(-3.0)
    batch = _batch([1, 0, 1, 1, 0, 0])
    out = RoutedTeachers([a, b, c], ["a", "b", "c"]).token_logprobs(batch)
    expected = torch.stack([(-2.0 if i == 1 else -1.0) + batch.tokens[r, 1:].float() / 100
                            for r, i in enumerate([1, 0, 1, 1, 0, 0])])
    assert torch.equal(out, expected)
    assert a.seen == [[5, 20, 25]] and b.seen == [[0, 10, 15]] and c.seen == []  # c has no rows: not called
    off = RoutedTeachers([_FakeTeacher(0.0, False), _FakeTeacher(0.0, False)], ["a", "b"])
    assert off.token_logprobs(batch) is None  # off the last pipeline stage
    with pytest.raises(ValueError, match="no teacher_index"):
        RoutedTeachers([a], ["a"]).token_logprobs(SequenceBatch(**{**batch.__dict__, "teacher_index": None}))


# ------------------------------------------------------------------------------------------------------ metrics
def test_per_teacher_metrics_against_a_plain_reference():
    g = torch.Generator().manual_seed(0)
    B, T = 6, 5
    student = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    teacher = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    mask = torch.rand(B, T, generator=g) > 0.3
    index = torch.tensor([0, 0, 1, 1, 1, 0])
    acc = MetricAccumulator()
    for rows in (slice(0, 4), slice(4, 6)):  # two micro-batches: the sums add up
        acc.add(per_teacher_stats(["a", "b"], index[rows], student[rows], teacher[rows], mask[rows]))
    got = acc.finalize()
    for i, name in enumerate(["a", "b"]):
        k3s, agree = [], []
        for r in range(B):
            for t in range(T):
                if index[r] == i and mask[r, t]:
                    d = float(teacher[r, t] - student[r, t])
                    k3s.append(math.exp(d) - d - 1)
                    agree.append(math.exp(float(teacher[r, t])) > 0.5)
        assert got[f"teacher/{name}/kl"] == pytest.approx(sum(k3s) / len(k3s), rel=1e-12)
        assert got[f"teacher/{name}/agreement"] == pytest.approx(sum(agree) / len(agree), rel=1e-12)
    assert 0 < got["teacher/a/agreement"] < 1 or 0 < got["teacher/b/agreement"] < 1
    assert route_shares(["a", "b", "c"], torch.tensor([1, 1, 0, 0, 1, 1]), 2) == {
        "teacher/a/share": 1 / 3, "teacher/b/share": 2 / 3, "teacher/c/share": 0.0}


# ---------------------------------------------------------------------------------------------------- the loss
def _loss_inputs(B=6, T=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g, dtype=torch.float64)
    return dict(logprobs=lp.clone().requires_grad_(True), mask=torch.rand(B, T, generator=g) > 0.2,
                old_logprobs=lp - 0.05 * torch.rand(B, T, generator=g, dtype=torch.float64),
                teacher_logprobs=-torch.rand(B, T, generator=g, dtype=torch.float64),
                advantages=torch.randn(B, generator=g, dtype=torch.float64),
                correct=torch.tensor([True, False] * (B // 2)))


def _loss(cfg, inputs, **extra):
    x = {k: (v.detach().clone().requires_grad_(True) if k == "logprobs" else v) for k, v in inputs.items()}
    dens = local_denominators(x["mask"])
    loss, stats = compute_policy_loss(cfg, denominators=dens, **x, **extra)
    loss.backward()
    return loss.detach(), x["logprobs"].grad


@pytest.mark.parametrize("algorithm", ["rlad", "kdrl"])
def test_teacher_weight_one_is_the_single_teacher_and_composes_with_trust(algorithm):
    cfg = LossConfig(algorithm=algorithm, alpha=0.3)
    d = _loss_inputs()
    base = _loss(cfg, d)
    ones = _loss(cfg, d, teacher_weight=torch.ones(6, dtype=torch.float64))
    assert torch.equal(base[0], ones[0]) and torch.equal(base[1], ones[1])  # weight 1: bit for bit
    # a weight w on its own == trust "scale" giving the same w (the loss's one per-response teacher weight)
    w = torch.tensor([0.0, 0.25, 1.0, 0.5, 0.75, 1.0], dtype=torch.float64)
    weighted = _loss(cfg, d, teacher_weight=w)
    scaled = _loss(LossConfig(algorithm=algorithm, alpha=0.3, teacher_trust="scale", teacher_trust_threshold=1.0), d,
                   teacher_pass_rate=w)
    assert torch.equal(weighted[0], scaled[0]) and torch.equal(weighted[1], scaled[1])
    # with trust: the product (gate keeps rows with rate >= 0.5)
    gate = LossConfig(algorithm=algorithm, alpha=0.3, teacher_trust="gate")
    rate = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    both = _loss(gate, d, teacher_pass_rate=rate, teacher_weight=w)
    product = _loss(LossConfig(algorithm=algorithm, alpha=0.3, teacher_trust="scale", teacher_trust_threshold=1.0),
                    d, teacher_pass_rate=rate * w)
    assert torch.allclose(both[0], product[0], rtol=0, atol=1e-15) and torch.allclose(both[1], product[1], atol=1e-15)
    # weight 0 on every row: rlad is grpo
    if algorithm == "rlad":
        zero = _loss(cfg, d, teacher_weight=torch.zeros(6, dtype=torch.float64))
        grpo = _loss(LossConfig(algorithm="grpo"), {k: v for k, v in d.items() if k != "teacher_logprobs"})
        assert torch.equal(zero[0], grpo[0]) and torch.equal(zero[1], grpo[1])
    with pytest.raises(ValueError, match="teacher_weight must be"):
        _loss(cfg, d, teacher_weight=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="teacher_weight must hold weights in"):
        _loss(cfg, d, teacher_weight=torch.full((6,), 1.5, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------- memory plan
def test_memory_plan_counts_every_megatron_teacher():
    s = ModelShape("s", 4, 8, 8, 512, 1024, vocab_size=32000)
    t1 = ModelShape("t1", 8, 8, 8, 1024, 2048, vocab_size=32000)
    t2 = ModelShape("t2", 12, 8, 8, 1024, 2048, vocab_size=32000)
    c = _config("teacher.teachers=[{name: a, model: /a}, {name: b, model: /b}, {name: c, model: /c, source: vllm}]",
                "teacher.default=a")
    plan = plan_memory(c, student=s, teacher=[t1, t2], gpu="h100")
    terms = {t.name: t.bytes for t in plan.terms}
    one_a = plan_memory(_config("model.teacher=/a"), student=s, teacher=t1, gpu="h100")
    one_b = plan_memory(_config("model.teacher=/b"), student=s, teacher=t2, gpu="h100")
    single = {t.name: t.bytes for t in one_a.terms}
    assert terms["teacher weights (a)"] == single["teacher weights"]
    assert terms["teacher weights (b)"] == {t.name: t.bytes for t in one_b.terms}["teacher weights"]
    assert plan.peak_bytes > one_a.peak_bytes
    assert any("source=vllm" in n for n in plan.notes)
    with pytest.raises(ValueError, match="2 Megatron teachers"):
        plan_memory(c, student=s, teacher=[t1], gpu="h100")
