"""Mean@k and the unbiased Pass@k estimator (Chen et al., 2021, "Evaluating Large Language Models Trained on Code").

With ``n`` samples of which ``c`` are correct, the probability that at least one of ``k`` samples drawn without
replacement is correct is ``1 - C(n - c, k) / C(n, k)``; it is computed as a product so that large ``n`` does not
overflow: ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)``.
"""
from __future__ import annotations

from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k for one problem with ``n`` samples, ``c`` correct (requires ``1 <= k <= n``)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n for Pass@k, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_at_k(correct: Sequence[bool]) -> float:
    """Mean@k for one problem: the fraction of its k samples that are correct."""
    if len(correct) == 0:
        raise ValueError("mean_at_k needs at least one sample")
    return sum(bool(x) for x in correct) / len(correct)
