"""Small-scale reproduction of the paper's comparison (issue 9): sft, grpo, kdrl and rlad from the same student and
teacher with the same rollout budget over seeds, the alpha sweep, a table and learning curves.

    python -m examples.compare --task arithmetic --seeds 3 --out outputs/compare

Heavy imports (Megatron, vLLM, transformers) happen inside functions; importing this package stays light.
"""
