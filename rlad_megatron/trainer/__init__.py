"""The RLAD trainer: the loop (``loop.py``), split by job: building a run, checks first (``setup/``), the pieces of a
step (``step/``), checkpoints and the run folder (``checkpoints/``), what a run shows and leaves behind
(``observability/``), and fault injection for the tests (``faults.py``)."""
