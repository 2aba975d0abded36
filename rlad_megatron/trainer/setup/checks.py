"""Check, then build: everything knowable about a run before a process group starts or a model loads, checked in one
place. :func:`run_problems` lists every problem, one line each naming the input (the dotted config key and the file
or folder) and the fix; :func:`check_run` raises them as one :class:`RunCheckError`.

    problems = run_problems(config)                 # at job start, on every rank: this machine is the job's
    problems = run_problems(config, cuda=False)     # on a launching machine, for a job that runs on CPUs elsewhere

The callers: ``rlad-megatron train`` on every rank before anything heavy (:mod:`rlad_megatron.cli`, which prints
the problems once and exits 2), :func:`rlad_megatron.trainer.loop.train` for library users, and the launcher
(``rlad-megatron launch`` / ``python -m recipes``, through ``recipes/job_checks.py``) before it submits a job. What
is checked, in the order a user would fix it:

- this machine (job start only): FP8 hardware, context parallelism's needs;
- the GPU-only settings against where the job computes (CPU or CUDA);
- the model folders (``config.json``, weights, tokenizer) of the student and the teacher the loss uses;
- the data: the task (a custom reward reference is resolved, never run), every train/eval file and its first rows
  (``rlad_megatron.data.check``), and what every training record must hold for this run (a teacher pass rate,
  a teacher route: ``record_checks``);
- ``trainer.output_dir``: not under a regular file, creatable and writable;
- with readable model folders: expert parallelism against the models, what the rollout engine (and a vLLM
  teacher) can serve where the job computes (vLLM's CPU attention), the tokenizers (turn ends agree; identical
  vocabularies when the teacher scores the student's tokens).

Nothing here starts a process group, loads a model or imports megatron or vLLM; the tokenizers are read with
transformers. ``build_components`` checks nothing: it builds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from rlad_megatron.config import ConfigError, RunConfig, megatron_teacher, teacher_models, teacher_use
from rlad_megatron.data.check import check_data_files
from rlad_megatron.device import uses_cuda
from rlad_megatron.fp8 import check_run_hardware
from rlad_megatron.models import builder
from rlad_megatron.models.folder_check import check_model_folder
from rlad_megatron.models.hf_config import load_arch
from rlad_megatron.models.stop_tokens import check_turn_ends_agree
from rlad_megatron.models.teacher import check_tokenizer_compatible
from rlad_megatron.rollout.cpu_attention import cpu_attention_problem
from rlad_megatron.trainer.checkpoints.run_dir import check_output_path
from rlad_megatron.trainer.setup.engine_settings import check_gpu_settings
from rlad_megatron.trainer.setup.record_checks import record_problems


class RunCheckError(ConfigError):
    """A run that cannot start; ``problems`` holds one line per problem (the message joins them)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def check_run(config: RunConfig, *, cuda: bool | None = None) -> None:
    """Raise :class:`RunCheckError` with every problem of :func:`run_problems`."""
    problems = run_problems(config, cuda=cuda)
    if problems:
        raise RunCheckError(problems)


def run_problems(config: RunConfig, *, cuda: bool | None = None) -> list[str]:
    """Every problem of the run ``config`` describes, one line each (see the module); [] when it can start.

    ``cuda=None``: this machine is the job's (job start): its hardware is checked and decides whether the job
    computes on CUDA. ``cuda=True/False``: a launcher checking for a job that runs elsewhere on GPUs / CPUs; this
    machine's hardware is not looked at, and paths are read as they are (map them first for a container)."""
    on_node = cuda is None
    if on_node:
        cuda = uses_cuda()
    problems: list[str] = []

    def attempt(check: Callable[[], None], what: str) -> bool:
        try:
            check()
        except ValueError as err:  # ConfigError, ModelFolderError, TokenizerMismatchError, RunDirError's kin
            problems.append(str(err))
            return False
        except (OSError, RuntimeError) as err:  # a file that does not read as its check expects
            problems.append(f"{what}: {type(err).__name__}: {err}")
            return False
        return True

    if on_node:
        attempt(lambda: check_run_hardware(config), "fp8")
        attempt(lambda: check_context_parallel_supported(config), "parallel.context_parallel")
    attempt(lambda: check_gpu_settings(config, cuda), "rollout")
    folders = [attempt(lambda k=key, p=path: check_model_folder(p, k), key) for key, path in model_folders(config)]
    problems += check_data_files(config.data)
    problems += record_problems(config)
    attempt(lambda: check_output_folder(config), "trainer.output_dir")
    if all(folders):
        attempt(lambda: check_expert_parallel(config.parallel.expert_parallel, expert_parallel_models(config)),
                "parallel.expert_parallel")
        problems += engine_problems(config, cuda=bool(cuda))
        attempt(lambda: check_tokenizers(config), "model.teacher")  # or teacher.teachers[i].model
    return problems


def model_folders(config: RunConfig) -> list[tuple[str, str]]:
    """(key, folder) of the models the run loads: the student, and the teacher when the loss uses one."""
    folders = [("model.student", config.model.student)]
    if config.model.teacher and teacher_use(config.loss) != "none":
        folders.append(("model.teacher", str(config.model.teacher)))
    if config.teacher.several():  # teacher.teachers[i].model
        folders += [(key, m.model) for key, m in teacher_models(config)]
    return folders


def check_output_folder(config: RunConfig) -> None:
    """``trainer.output_dir`` is not under a regular file, and this user can create it or write into it."""
    try:
        check_output_path(Path(config.trainer.output_dir))
    except RuntimeError as err:  # RunDirError: its message names the key and the fix
        raise ConfigError(str(err)) from None


def engine_models(config: RunConfig) -> list[tuple[str, str]]:
    """(key, folder) of the models a vLLM engine serves in this run: the rollout engine's (the student, or the
    teacher whose samples sft trains on) and a vLLM teacher's (``teacher.source=vllm``, colocated or a pool)."""
    use = teacher_use(config.loss)
    served = [("model.teacher", str(config.model.teacher))] if use == "samples" else [
        ("model.student", config.model.student)]
    served += [(key, m.model) for key, m in teacher_models(config) if m.source == "vllm"]
    return served


def engine_problems(config: RunConfig, *, cuda: bool) -> list[str]:
    """What the run's vLLM engines cannot serve where the job computes (on CPU: vLLM's attention head sizes)."""
    if cuda:
        return []
    found = (cpu_attention_problem(path, key) for key, path in engine_models(config))
    return [p for p in found if p]


def check_context_parallel_supported(config: RunConfig) -> None:
    """The combinations with context parallelism that the trainer does not run, refused at start (CP itself runs:
    TE's attention on GPUs, ``models.cp_attention`` on the local spec)."""
    cp = config.parallel.context_parallel
    if cp == 1:
        return
    builder.check_context_parallel(cp)
    if config.trainer.sequence_packing and builder.use_transformer_engine():
        raise ConfigError(f"parallel.context_parallel={cp} with trainer.sequence_packing=true: packed rows go to "
                          "Transformer Engine as THD, whose context-parallel split is per sequence and not "
                          "implemented here: set trainer.sequence_packing=false (token-budget micro-batches, "
                          "trainer.max_tokens_per_micro_batch, work with context parallelism)")


def expert_parallel_models(config: RunConfig) -> dict[str, str]:
    """The models expert parallelism would split (config key -> HF folder): the student, the Megatron teacher."""
    models = {"model.student": config.model.student}
    if megatron_teacher(config):
        models["model.teacher"] = str(config.model.teacher)
    if config.teacher.several():
        models.update((key, m.model) for key, m in teacher_models(config) if m.source == "megatron")
    return models


def check_expert_parallel(expert_parallel: int, models: dict[str, str]) -> None:
    """``parallel.expert_parallel`` > 1 needs a Mixture-of-Experts model among ``models`` (config key -> HF
    directory: the student, the Megatron teacher) and must divide each one's experts per layer."""
    if expert_parallel == 1:
        return
    experts = {key: load_arch(path).num_experts for key, path in models.items()}
    if not any(experts.values()):
        raise ConfigError(f"parallel.expert_parallel={expert_parallel}, but neither {' nor '.join(experts)} is a "
                          "Mixture-of-Experts model: set parallel.expert_parallel=1")
    for key, count in experts.items():
        if count and count % expert_parallel:
            raise ConfigError(f"parallel.expert_parallel={expert_parallel} must divide the {count} experts per layer "
                              f"of {key} ({models[key]}): choose a divisor of {count}")


def check_tokenizers(config: RunConfig) -> None:
    """With a teacher (it scores the student's turns, or generates them for sft): both chat templates end a turn
    with the same token; when it scores the student's tokens (log-probs), both tokenizers map every id alike.
    Raises ``ConfigError`` naming ``model.teacher`` (the message says how the two differ)."""
    use = teacher_use(config.loss)
    m = config.model
    teachers = [(key, t.model) for key, t in teacher_models(config)] if config.teacher.several() else (
        [("model.teacher", str(m.teacher))] if m.teacher else [])
    if use == "none" or not teachers:
        return
    # transformers is imported when a job checks its tokenizers, not when the trainer package is imported
    from transformers import AutoTokenizer

    student = _tokenizer(AutoTokenizer, "model.student", m.student, m.trust_remote_code)
    for key, path in teachers:  # every teacher scores (or writes) the student's turns
        teacher = _tokenizer(AutoTokenizer, key, path, m.trust_remote_code)
        try:
            check_turn_ends_agree(student, teacher, config.data.chat_template_kwargs, student=m.student,
                                  teacher=path)
            if use == "logprobs":
                check_tokenizer_compatible(m.student, path)
        except ValueError as err:  # TokenizerMismatchError and the turn-end check
            raise ConfigError(f"{key}={path} does not fit model.student={m.student}: {err}") from None


def _tokenizer(auto, key: str, path: str, trust_remote_code: bool):
    try:
        return auto.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - a tokenizer that does not load is the problem, whatever its kind
        raise ConfigError(f"{key}={path}: its tokenizer does not load ({type(err).__name__}: {err}); the folder needs "
                          "the tokenizer files of its model (tokenizer.json / tokenizer_config.json)") from None
