"""The shared shape of every result: a dataclass with `summary()` and JSON output.

>>> json_safe({"a": np.float32(0.5), "b": (1, float("nan")), "c": np.arange(2)})
{'a': 0.5, 'b': [1, None], 'c': [0, 1]}
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np


def json_safe(value):
    """`value` with numpy scalars made Python numbers, tuples made lists and NaN/inf made None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


class Result:
    """Mixin for result dataclasses."""

    def to_dict(self) -> dict:
        """The JSON-able fields (pictures' sample arrays are left out)."""
        return json_safe({
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("json", True)
        })

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:  # pragma: no cover - each result overrides it
        raise NotImplementedError
