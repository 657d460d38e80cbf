"""The shared shape of every result: a dataclass with `summary()` and JSON output."""

from __future__ import annotations

import dataclasses
import json
import math


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    return value


class Result:
    """Mixin for result dataclasses."""

    def to_dict(self) -> dict:
        """The JSON-able fields (pictures' sample arrays are left out)."""
        return _clean({
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("json", True)
        })

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:  # pragma: no cover - each result overrides it
        raise NotImplementedError
