"""The quickstart (``make demo``): prepare a tiny teacher and student on the arithmetic task, run RLAD with the
Megatron learner (TP=2 over two gloo processes) and the vLLM CPU engine, and report the accuracies before/after.

Heavy imports (transformers, vLLM) happen inside the functions; importing this package stays light.
"""
