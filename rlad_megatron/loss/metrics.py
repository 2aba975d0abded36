"""Loss metrics that reduce exactly across micro-batches and data-parallel ranks.

A loss returns ``dict[str, Stat]``. A ``Stat`` is a sum with its count (``reduce="mean"``: the final value is
``sum / count``; ``"sum"``: the final value is the sum itself) or an extremum (``"min"`` / ``"max"``). None are averages of averages, so the result of a step
does not depend on how its batch was split. This module has no collectives; the trainer does::

    acc = MetricAccumulator()
    for micro_batch in ...:
        loss, metrics = compute_policy_loss(...)
        acc.add(metrics)
    sums, maxima = acc.tensors()                      # float64, 1-D, same layout on every rank
    torch.distributed.all_reduce(sums, op=SUM, group=dp_group)
    torch.distributed.all_reduce(maxima, op=MAX, group=dp_group)
    logged = acc.finalize(sums, maxima)               # {name: float}

Every rank must have added the same metric names (they depend only on the loss config), or ``tensors()`` would
lay them out differently; ``finalize`` checks the lengths.
"""

from __future__ import annotations

import math
from typing import Literal, Mapping, NamedTuple

import torch
from torch import Tensor

Reduce = Literal["mean", "sum", "min", "max"]
_SUMMED = ("mean", "sum")


class Stat(NamedTuple):
    """One metric of one micro-batch: 0-d float64 tensors, detached."""

    value: Tensor
    """The sum (``reduce="mean"`` or ``"sum"``), the minimum or the maximum over the counted items."""
    count: Tensor
    """How many items (tokens, sequences, groups) the value covers."""
    reduce: Reduce = "mean"


def _f64(x: Tensor | float) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to(torch.float64).reshape(())
    return torch.tensor(float(x), dtype=torch.float64)


def mean_stat(values: Tensor, mask: Tensor) -> Stat:
    """Sum of ``values`` where ``mask`` (bool, same shape) and the number of such items."""
    m = mask.detach()
    v = values.detach()
    return Stat(_f64(torch.where(m, v, torch.zeros_like(v)).double().sum()), _f64(m.sum()), "mean")


def fraction_stat(flags: Tensor, mask: Tensor) -> Stat:
    """Fraction of the masked items where ``flags`` (bool) holds, as a sum and a count."""
    return mean_stat(flags.detach().to(torch.float64), mask)


def sum_stat(value: Tensor | float, count: Tensor | float = 1.0) -> Stat:
    """A quantity whose final value is its sum over micro-batches and ranks (e.g. this step's loss)."""
    return Stat(_f64(value), _f64(count), "sum")


def extremum_stat(values: Tensor, mask: Tensor, reduce: Literal["min", "max"]) -> Stat:
    """Minimum or maximum of ``values`` where ``mask``; +inf / -inf when nothing is masked in."""
    m = mask.detach()
    v = values.detach().to(torch.float64)
    fill = math.inf if reduce == "min" else -math.inf
    masked = torch.where(m, v, torch.full_like(v, fill))
    value = masked.min() if reduce == "min" else masked.max()
    if masked.numel() == 0:
        value = torch.tensor(fill, dtype=torch.float64)
    return Stat(_f64(value), _f64(m.sum()), reduce)


class MetricAccumulator:
    """Adds up ``Stat`` dicts of micro-batches, packs them for all-reduce, and turns them into floats."""

    def __init__(self) -> None:
        self._stats: dict[str, Stat] = {}

    def add(self, metrics: Mapping[str, Stat]) -> None:
        """Merge one micro-batch's metrics (sums add, extrema combine)."""
        for name, stat in metrics.items():
            if not isinstance(stat, Stat):
                raise TypeError(f"metric {name!r} must be a loss.metrics.Stat, got {type(stat).__name__}")
            old = self._stats.get(name)
            if old is None:
                self._stats[name] = Stat(_f64(stat.value), _f64(stat.count), stat.reduce)
                continue
            if old.reduce != stat.reduce:
                raise ValueError(f"metric {name!r} was added with reduce={old.reduce!r} and now {stat.reduce!r}")
            if stat.reduce in _SUMMED:
                value = old.value + _f64(stat.value)
            elif stat.reduce == "min":
                value = torch.minimum(old.value, _f64(stat.value))
            else:
                value = torch.maximum(old.value, _f64(stat.value))
            self._stats[name] = Stat(value, old.count + _f64(stat.count), stat.reduce)

    def names(self) -> list[str]:
        """The metric names in the packed layout's order (sorted)."""
        return sorted(self._stats)

    def tensors(self) -> tuple[Tensor, Tensor]:
        """``(sums, maxima)``: all-reduce ``sums`` with SUM and ``maxima`` with MAX over the DP group.

        ``sums`` holds ``[value, count]`` of every "mean"/"sum" metric and the count of every extremum; ``maxima``
        holds every "max" value and the negated "min" values.
        """
        sums: list[Tensor] = []
        maxima: list[Tensor] = []
        for name in self.names():
            stat = self._stats[name]
            if stat.reduce in _SUMMED:
                sums += [stat.value, stat.count]
            else:
                sums.append(stat.count)
                maxima.append(stat.value if stat.reduce == "max" else -stat.value)
        # One device for the packed tensors: stats of a GPU loss live on the GPU, a few (constants) on the CPU.
        device = next((t.device for t in sums + maxima if t.device.type != "cpu"), torch.device("cpu"))
        empty = torch.zeros(0, dtype=torch.float64, device=device)
        return (torch.stack([t.to(device) for t in sums]) if sums else empty,
                torch.stack([t.to(device) for t in maxima]) if maxima else empty)

    def finalize(self, sums: Tensor | None = None, maxima: Tensor | None = None) -> dict[str, float]:
        """Final values, from the (reduced) packed tensors, or from the local state when none are given.

        A metric whose count is 0 comes out as NaN.
        """
        if sums is None or maxima is None:
            sums, maxima = self.tensors()
        n_sums = sum(2 if s.reduce in _SUMMED else 1 for s in self._stats.values())
        n_max = sum(0 if s.reduce in _SUMMED else 1 for s in self._stats.values())
        if sums.numel() != n_sums or maxima.numel() != n_max:
            raise ValueError(
                f"packed metric tensors have {sums.numel()}/{maxima.numel()} entries but this accumulator expects "
                f"{n_sums}/{n_max}: every rank must add the same metric names ({self.names()})"
            )
        s = sums.tolist()
        mx = maxima.tolist()
        out: dict[str, float] = {}
        i = j = 0
        for name in self.names():
            stat = self._stats[name]
            if stat.reduce in _SUMMED:
                value, count = s[i], s[i + 1]
                i += 2
                if count <= 0:
                    out[name] = math.nan
                else:
                    out[name] = value / count if stat.reduce == "mean" else value
            else:
                count = s[i]
                i += 1
                value = mx[j] if stat.reduce == "max" else -mx[j]
                j += 1
                out[name] = value if count > 0 else math.nan
        return out
