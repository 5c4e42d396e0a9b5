"""Percentile bootstrap confidence intervals over items.

Each resample draws n item indices with replacement and applies them to every array at once
(paired resampling: an item's gold and prediction stay together), then recomputes the metric.
The random stream is numpy's PCG64 seeded with `seed`, so the same call always gives the same
interval. A resample on which the metric is undefined (it returns None or NaN, e.g. Pearson on a
resample that happens to be constant) is skipped; `n_used` says how many resamples counted.
Skipping conditions the interval on the metric being defined; when `n_used` is far below
`n_resamples`, read the interval with that in mind.

`scipy.stats.bootstrap` is not used: it has no notion of an undefined resample (one NaN spoils
the interval) and it needs numeric arrays, while these metrics take labels with None in them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepfakejudge.metrics._common import Result, is_missing, is_number


@dataclass(frozen=True)
class BootstrapCI(Result):
    """A percentile interval [low, high] at `confidence`, around `estimate` (the metric on the
    full sample). Unpacks as `(low, high)`. Undefined figures are NaN here and None in
    `to_dict()`; low and high are NaN when no resample was defined (`n_used == 0`)."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    n_used: int
    seed: int

    def __iter__(self) -> Iterator[float]:
        return iter((self.low, self.high))


def _prepare(
    arrays: Sequence[Sequence[Any]], n_resamples: int, confidence: float, seed: int
) -> list[np.ndarray]:
    if not arrays:
        raise ValueError("bootstrap needs at least one array to resample")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples = {n_resamples!r}; expected a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed = {seed!r}; expected an integer (a fixed seed keeps intervals reproducible)")
    if not is_number(confidence) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence = {confidence!r}; expected a number strictly between 0 and 1")
    out = []
    for k, a in enumerate(arrays):
        if isinstance(a, (str, bytes)):
            raise ValueError(f"arrays[{k}] must be a sequence of items, got the string {a!r}")
        arr = a if isinstance(a, np.ndarray) else _as_array(a)
        if arr.ndim == 0:
            raise ValueError(f"arrays[{k}] is a scalar; expected one entry per item")
        out.append(arr)
    n = len(out[0])
    for k, arr in enumerate(out[1:], start=1):
        if len(arr) != n:
            raise ValueError(
                f"arrays[{k}] has {len(arr)} items but arrays[0] has {n}; they must be aligned item by item"
            )
    if n == 0:
        raise ValueError("the arrays are empty; there is nothing to resample")
    return out


def _as_array(a: Sequence[Any]) -> np.ndarray:
    """A sequence as an array indexed by item (rows of a table stay whole); items stay Python
    objects when they include None or mix types that numpy cannot hold in one dtype."""
    items = list(a)
    if any(v is None for v in items):
        return np.asarray(items, dtype=object)
    try:
        return np.asarray(items)
    except (ValueError, TypeError):  # ragged rows
        return np.asarray(items, dtype=object)


def _value(v: Any) -> float:
    """A metric value as float, NaN when undefined (None or non-finite)."""
    if is_missing(v):
        return math.nan
    v = float(v)
    return v if math.isfinite(v) else math.nan


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float, int]:
    ok = values[~np.isnan(values)]
    if len(ok) == 0:
        return math.nan, math.nan, 0
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(ok, [tail, 1.0 - tail])
    return float(low), float(high), len(ok)


def _resample(
    metric_fn: Callable[..., Any],
    arrays: list[np.ndarray],
    n_resamples: int,
    seed: int,
) -> Iterator[Any]:
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        yield metric_fn(*(a[idx] for a in arrays))


def bootstrap_ci(
    metric_fn: Callable[..., float | None],
    *arrays: Sequence[Any],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap interval of `metric_fn(*arrays)` over items.

    `metric_fn` takes the arrays (numpy arrays, resampled along the first axis together) and
    returns a number, or None/NaN when undefined. Deterministic for a fixed `seed`. Raises
    ValueError on arrays of different lengths, empty arrays, or a bad `n_resamples`,
    `confidence` or `seed`.
    """
    data = _prepare(arrays, n_resamples, confidence, seed)
    estimate = _value(metric_fn(*data))
    values = np.fromiter(
        (_value(v) for v in _resample(metric_fn, data, n_resamples, seed)), float, n_resamples
    )
    low, high, used = _interval(values, confidence)
    return BootstrapCI(estimate, low, high, confidence, n_resamples, used, seed)


def bootstrap_cis(
    metric_fn: Callable[..., Mapping[str, Any]],
    *arrays: Sequence[Any],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, BootstrapCI]:
    """Like `bootstrap_ci` for a metric that returns several figures at once (a mapping of name
    to number or None, e.g. `lambda g, p: pointwise_agreement(g, p).to_dict()`): one pass over
    the resamples, one interval per figure that is a number on the full sample (non-numeric
    entries such as a confusion matrix, and figures undefined on the full sample, get none).
    Each figure skips its own undefined resamples."""
    data = _prepare(arrays, n_resamples, confidence, seed)
    full = metric_fn(*data)
    names = [k for k, v in full.items() if is_number(v) and not is_missing(v)]
    values = np.full((len(names), n_resamples), math.nan)
    for r, result in enumerate(_resample(metric_fn, data, n_resamples, seed)):
        for j, name in enumerate(names):
            values[j, r] = _value(result.get(name))
    out = {}
    for j, name in enumerate(names):
        low, high, used = _interval(values[j], confidence)
        out[name] = BootstrapCI(_value(full[name]), low, high, confidence, n_resamples, used, seed)
    return out
