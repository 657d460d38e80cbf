"""The result of a key-free attack, its scoring, and the convention for specs an attack does not apply to.

Convention (for every attack built on this module): an attack that does not
apply to a spec (the spectral attack on a non-linear spec, the ECB leak on a
noisy one) does not raise. It returns its result with `applicable=False`, a
`reason` that says why, and `success=0.0` (it recovered nothing), and its
headline number is None, which the report shows as "-". Code that takes the
worst attack over several may therefore use `success` as it is, and code that
lists what was measured checks `applicable`.

Example:

>>> r = not_applicable(KeyFreeResult, "the spec adds noise", setting="s")
>>> r.name = "demo"
>>> r.success, r.applicable, r.headline()
(0.0, False, {'demo success': None})
>>> r.summary()
'demo (level 0) [s]: not applicable: the spec adds noise'
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfdisguise.privacy.attacks.base import AttackInput, AttackResult, examiner_reference, relative_success
from tfdisguise.privacy.metrics import accuracy

__all__ = ["KeyFreeResult", "not_applicable", "score_reconstruction"]


@dataclasses.dataclass(kw_only=True)
class KeyFreeResult(AttackResult):
    """What a level-1 attack recovered without the key.

    success: `attacked_accuracy` over `examiner_accuracy_original`, clipped to [0, 1].
    applicable, reason: False and why, when the attack does not apply to the spec.
    attacked_accuracy: the examiner's accuracy on the attack's reconstructions
        (for an attack that only classifies: the attack's own accuracy).
    examiner_accuracy_original: the examiner's accuracy on the victim's originals.
    positions_correct: the share of block positions the attack placed where the
        key put them (when the spec permutes and the true permutation was given).
    mse: mean squared error of the reconstructions on the 0..255 scale.
    """

    applicable: bool = True
    reason: str = ""
    attacked_accuracy: float | None = None
    examiner_accuracy_original: float | None = None
    positions_correct: float | None = None
    mse: float | None = None

    def headline(self) -> dict[str, float | None]:
        return {f"{self.name} success": self.success if self.applicable else None}

    def summary(self) -> str:
        head = f"{self.name} (level {self.level}) [{self.setting}]"
        if not self.applicable:
            return f"{head}: not applicable: {self.reason}"
        parts = [f"success {self.success:.2f}"]
        if self.attacked_accuracy is not None:
            parts.append(f"accuracy {self.attacked_accuracy:.4f} (originals {self.examiner_accuracy_original:.4f})")
        if self.positions_correct is not None:
            parts.append(f"positions correct {self.positions_correct:.2f}")
        if self.mse is not None:
            parts.append(f"MSE {self.mse:.0f}")
        return f"{head}: " + "; ".join(parts)


def not_applicable(cls, reason: str, setting: str = "", **fields) -> KeyFreeResult:
    """A `cls` result saying the attack does not apply, and why."""
    return cls(success=0.0, applicable=False, reason=reason, setting=setting, **fields)


def score_reconstruction(inp: AttackInput, reconstructed, n: int | None = None) -> dict:
    """Scores images reconstructed from the first `n` victim images against the originals.

    Returns the fields `KeyFreeResult` takes: success, attacked_accuracy,
    examiner_accuracy_original and mse.
    """
    inp.require("scoring", "examiner", "victim_plain")
    plain = np.asarray(inp.victim_plain, np.float64)[:n]
    reconstructed = np.asarray(reconstructed)
    reference = examiner_reference(inp, len(reconstructed))
    attacked = accuracy(inp.examiner, reconstructed.astype(np.float32), np.asarray(inp.victim_labels)[:n])
    return {"success": relative_success(attacked, reference), "attacked_accuracy": attacked,
            "examiner_accuracy_original": reference,
            "mse": float(np.mean((reconstructed - plain[:len(reconstructed)]) ** 2))}


def positions_correct(inp: AttackInput, perm) -> float | None:
    """The share of positions where `perm` agrees with the key's permutation (None when not given)."""
    if inp.true_perm is None:
        return None
    return float(np.mean(np.asarray(perm) == np.asarray(inp.true_perm)))
