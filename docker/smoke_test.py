"""The image's own check: import vLLM, megatron-core and Transformer Engine, and (with a GPU) run one forward of each.

    python /opt/docker/smoke_test.py                 # in the image, on a GPU node: imports + three forwards
    python /opt/docker/smoke_test.py --imports-only  # at build time (no GPU there): imports, vllm._C loads

The forwards: a Transformer Engine ``Linear``; a 2-layer Megatron GPTModel with the TE layer spec in a one-rank NCCL
world; a vLLM engine on a tiny random Llama written to a temporary folder (greedy, 4 tokens). Exit status 0 only if
all of them ran; each failure is printed with the part's name.
"""
from __future__ import annotations

import os
import sys
import tempfile
import traceback


def _imports() -> None:
    import torch
    import megatron.core
    import transformer_engine
    import transformer_engine.pytorch  # noqa: F401
    import vllm
    import vllm._C  # noqa: F401  the compiled extension: fails here if it does not match this torch

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), megatron-core {megatron.core.__version__}, "
          f"transformer_engine {transformer_engine.__version__}, vllm {vllm.__version__}")


def _te_forward() -> None:
    import torch
    import transformer_engine.pytorch as te

    layer = te.Linear(256, 256, params_dtype=torch.bfloat16).cuda()
    out = layer(torch.randn(16, 256, device="cuda", dtype=torch.bfloat16))
    assert out.shape == (16, 256) and torch.isfinite(out).all()


def _megatron_forward() -> None:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec
    from megatron.core.transformer import TransformerConfig

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29555")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        parallel_state.initialize_model_parallel(1, 1)
        tensor_parallel.model_parallel_cuda_manual_seed(0)
        config = TransformerConfig(num_layers=2, hidden_size=256, num_attention_heads=4, ffn_hidden_size=512,
                                   params_dtype=torch.bfloat16, bf16=True, hidden_dropout=0.0, attention_dropout=0.0)
        model = GPTModel(config=config, transformer_layer_spec=get_gpt_layer_with_transformer_engine_spec(),
                         vocab_size=1024, max_sequence_length=64).cuda()
        tokens = torch.randint(0, 1024, (2, 64), device="cuda")
        positions = torch.arange(64, device="cuda").unsqueeze(0).expand(2, -1)
        logits = model(tokens, positions, None)
        assert logits.shape[:2] == (2, 64) and torch.isfinite(logits).all()
        parallel_state.destroy_model_parallel()
    finally:
        dist.destroy_process_group()


def _vllm_forward() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM
    from vllm import LLM, SamplingParams

    with tempfile.TemporaryDirectory() as folder:
        config = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        LlamaForCausalLM(config).save_pretrained(folder)
        llm = LLM(model=folder, tokenizer=None, skip_tokenizer_init=True, dtype="bfloat16", max_model_len=128,
                  gpu_memory_utilization=0.3, enforce_eager=True)
        out = llm.generate([{"prompt_token_ids": [1, 2, 3, 4]}], SamplingParams(max_tokens=4, temperature=0.0))
        assert len(out[0].outputs[0].token_ids) == 4


def main(argv: list[str]) -> int:
    parts = [("imports", _imports)]
    if "--imports-only" not in argv:
        parts += [("transformer_engine forward", _te_forward), ("megatron-core forward", _megatron_forward),
                  ("vllm forward", _vllm_forward)]
    failed = []
    for name, run in parts:
        try:
            run()
            print(f"ok: {name}", flush=True)
        except Exception:
            failed.append(name)
            print(f"FAILED: {name}\n{traceback.format_exc()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
