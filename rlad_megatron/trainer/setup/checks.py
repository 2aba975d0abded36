"""Check, then build: everything knowable about a run before a process group starts or a model loads, checked in one
place, :func:`check_run`, which :func:`rlad_megatron.trainer.setup.components.build_components` calls first.

``check_run`` reads files (the model folders' ``config.json``, the tokenizers) and looks at this machine (CUDA,
Transformer Engine); it starts no process group and loads no model, so that it can run on the launching process as
well. Each check raises an error naming the input (the dotted config key or the folder) and the fix: a
``ConfigError``, or the ``ValueError`` subclass of the check (``ModelFolderError``, ``TokenizerMismatchError``).
"""
from __future__ import annotations

from rlad_megatron.config import ConfigError, RunConfig, megatron_teacher, teacher_use
from rlad_megatron.data.check import check_data_files
from rlad_megatron.device import uses_cuda
from rlad_megatron.fp8 import check_run_hardware
from rlad_megatron.models import builder
from rlad_megatron.models.folder_check import check_model_folder
from rlad_megatron.models.hf_config import load_arch
from rlad_megatron.models.stop_tokens import check_turn_ends_agree
from rlad_megatron.models.teacher import check_tokenizer_compatible
from rlad_megatron.trainer.setup.engine_settings import check_gpu_settings


def check_run(config: RunConfig) -> None:
    """Every check of a run that needs no process group and no model, in the order a user would fix them: this
    machine, the model folders, the data, the parallel layout against the models, the tokenizers."""
    check_run_hardware(config)  # validation is pure; what the config asks of this machine is checked here
    check_gpu_settings(config, uses_cuda())
    check_model_folders(config)
    check_data(config)
    check_context_parallel_supported(config)
    check_expert_parallel(config.parallel.expert_parallel, expert_parallel_models(config))
    check_tokenizers(config)


def check_model_folders(config: RunConfig) -> None:
    """The student's folder, and the teacher's when the run uses a teacher (log-probs or samples)."""
    check_model_folder(config.model.student, "model.student")
    if config.model.teacher and teacher_use(config.loss) != "none":
        check_model_folder(config.model.teacher, "model.teacher")


def check_data(config: RunConfig) -> None:
    """The data files' first rows give valid records for the task (``data.fields`` applied; no tokenizer)."""
    problems = check_data_files(config.data)
    if problems:
        raise ConfigError("; ".join(problems))


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
    with the same token; when it scores the student's tokens (log-probs), both tokenizers map every id alike."""
    use = teacher_use(config.loss)
    if use == "none" or not config.model.teacher:
        return
    # transformers is imported when a job checks its tokenizers, not when the trainer package is imported
    from transformers import AutoTokenizer

    m = config.model
    student = AutoTokenizer.from_pretrained(m.student, trust_remote_code=m.trust_remote_code)
    teacher = AutoTokenizer.from_pretrained(m.teacher, trust_remote_code=m.trust_remote_code)
    check_turn_ends_agree(student, teacher, config.data.chat_template_kwargs, student=m.student, teacher=m.teacher)
    if use == "logprobs":
        check_tokenizer_compatible(m.student, m.teacher)
