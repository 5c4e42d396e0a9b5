"""Shared pieces of the metric modules: the result base class and input checks.

Every metric result is a frozen dataclass deriving from `Result`; `to_dict()` turns it into
plain JSON values, with None wherever a figure is undefined (never NaN, which JSON lacks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from numbers import Real
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """`value` as plain JSON data: NaN/inf become None, numpy scalars become Python numbers."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    raise TypeError(f"cannot turn {type(value).__name__} into JSON")


@dataclass(frozen=True)
class Result:
    """Base of every metric result: a frozen dataclass with a JSON-safe `to_dict()`."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: json_safe(getattr(self, f.name)) for f in fields(self)}


def as_items(name: str, values: Sequence[Any]) -> list[Any]:
    """`values` as a list, refusing a bare string (which would iterate over its characters)."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of items, got the string {values!r}")
    try:
        return list(values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of items, got {type(values).__name__}") from None


def check_aligned(name_a: str, a: Sequence[Any], name_b: str, b: Sequence[Any]) -> None:
    """Raise unless `a` and `b` are non-empty and of equal length (one entry per item)."""
    if len(a) != len(b):
        raise ValueError(
            f"{name_a} has {len(a)} items but {name_b} has {len(b)}; they must be aligned item by item"
        )
    if len(a) == 0:
        raise ValueError(f"{name_a} and {name_b} are empty; there is nothing to score")


def is_number(value: Any) -> bool:
    """True for real numbers (Python or numpy), False for bools, strings and None."""
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


def is_missing(value: Any) -> bool:
    """None or a float NaN."""
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def float_array(values: Sequence[Any]) -> tuple[np.ndarray, int] | None:
    """Fast path for checks: (floats with NaN for None, number of None) when every item is None
    or a real number (bools excluded); None otherwise, so that the caller walks the items and
    names the offending one."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        return values.astype(float), 0
    items = values if isinstance(values, list) else list(values)
    for t in set(map(type, items)):
        if t is not type(None) and (not issubclass(t, _NUMBER_TYPES) or issubclass(t, bool)):
            return None
    n_none = items.count(None)
    if n_none:
        items = [math.nan if v is None else v for v in items]
    return np.asarray(items, dtype=float), n_none


_NUMBER_TYPES = (int, float, np.integer, np.floating)


def show(value: Any) -> str:
    """repr of a value for an error message, numpy scalars shown as the Python value."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def ratio(num: float, den: float) -> float | None:
    """num / den, or None when den is 0 (the figure is undefined)."""
    return None if den == 0 else float(num) / float(den)
