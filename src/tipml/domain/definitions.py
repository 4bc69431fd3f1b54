"""One feature, defined once: used online by the consumers and offline by the builders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

Dtype = Literal["map<str,int>", "int", "float", "timestamp", "list<int>", "list<struct>"]


@dataclass(frozen=True)
class FeatureDef:
    name: str
    dtype: Dtype
    entity: Literal["user", "tip"]
    window: timedelta | None
    aggregation: str
    description: str
    compute: Callable[[Any, float], Any]
