"""Transport into a colocated engine living in this process: buckets are handed over by reference."""
from __future__ import annotations

from typing import Iterator

from rlad_megatron.weight_sync.buckets import Named


class InProcessTransport:
    """Feed buckets to an in-process engine (``VLLMEngine``): ``begin_sync``, ``load_bucket``..., ``finish_sync``.

    With ``weight_load="inplace"`` each bucket is copied straight into the engine's parameters as it arrives;
    with ``"vllm_reload"`` the stream goes through vLLM's layerwise ``reload_weights`` (reference path).
    """

    def __init__(self, engine) -> None:
        self.engine = engine

    def send(self, version: int, buckets: Iterator[list[Named]]) -> None:
        self.engine.begin_sync(version)
        if self.engine.config.weight_load == "inplace":
            for bucket in buckets:
                self.engine.load_bucket(bucket)
        else:
            self.engine.reload_all(item for bucket in buckets for item in bucket)
        self.engine.finish_sync(version)
