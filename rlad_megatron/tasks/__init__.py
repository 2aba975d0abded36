"""Tasks, one folder each (prompt, record schema, reward, data writer together), the :class:`Task` base class and
the registry. Dataset loading and tokenizers are in :mod:`rlad_megatron.data`."""
