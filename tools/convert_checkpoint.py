"""Convert checkpoints: HF <-> Megatron dist checkpoint, Megatron -> Megatron at another TP/PP.

    python tools/convert_checkpoint.py hf-to-mcore --hf ./Qwen3-0.6B --out ./ckpt --tp 1
    torchrun --nproc-per-node 2 tools/convert_checkpoint.py mcore-to-mcore --ckpt ./ckpt --out ./ckpt_tp2 --tp 2
    python tools/convert_checkpoint.py mcore-to-hf --ckpt ./ckpt_tp2 --out ./hf_out --dtype bf16

Same as ``rlad-megatron convert ...`` (see rlad_megatron/convert.py). The ``__main__`` guard is required: the
checkpoint saver starts a spawn multiprocessing Manager that re-imports this file.
"""
from rlad_megatron.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
