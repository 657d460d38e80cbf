"""The papers' metrics: model quality, visual privacy, misusability, class membership.

Example (constructed answers):

>>> import numpy as np
>>> round(fano_factor(np.array([10, 10, 10, 10])), 3)
0.0
>>> round(fano_factor(np.array([40, 0, 0, 0])), 3)
40.0
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfdisguise.privacy.result import Result

__all__ = [
    "FanoResult",
    "PrivacyReport",
    "accuracy",
    "attack_success",
    "class_membership_test",
    "fano_factor",
    "misusability",
    "visual_privacy",
]


def _predict_labels(model, x, batch_size=512) -> np.ndarray:
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(probs).argmax(axis=-1)


def accuracy(model, x, y, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` (softmax or logits output) on `x`."""
    if len(x) == 0:
        raise ValueError("accuracy() needs at least one image.")
    return float(np.mean(_predict_labels(model, x, batch_size) == np.asarray(y).reshape(-1)))


def visual_privacy(examiner, disguised_x, y) -> float:
    """1 - the accuracy, on disguised images, of an examiner trained on plain images.

    High means a model that recognizes plain images cannot recognize the
    disguised ones (the paper's visual privacy).
    """
    return 1.0 - accuracy(examiner, disguised_x, y)


def misusability(disguised_model, plain_x, y) -> float:
    """The accuracy, on plain images, of the model trained on disguised images. Lower is better."""
    return accuracy(disguised_model, plain_x, y)


def attack_success(examiner_accuracy_attacked: float, examiner_accuracy_original: float) -> float:
    """Examiner accuracy on attacked/reconstructed images over its accuracy on originals."""
    if examiner_accuracy_original <= 0:
        raise ValueError("The examiner's accuracy on originals must be > 0 to measure attack success.")
    return examiner_accuracy_attacked / examiner_accuracy_original


def fano_factor(counts) -> float:
    """Variance over mean of a histogram's counts (sample variance, ddof=1).

    0 for a perfectly flat histogram; large when predictions pile onto few labels.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size < 2 or counts.mean() == 0:
        raise ValueError(f"A Fano factor needs >= 2 bins and a non-empty histogram. Received: {counts.tolist()}")
    return float(counts.var(ddof=1) / counts.mean())


def _dispersion_p_value(counts) -> float:
    """P(a uniform multinomial histogram is at least this dispersed): the index-of-dispersion test.

    Under uniform predictions, (k-1) * Fano ~ chi-square with k-1 degrees of freedom.
    """
    from scipy import stats

    counts = np.asarray(counts, dtype=np.float64)
    k = counts.size
    return float(stats.chi2.sf((k - 1) * fano_factor(counts), df=k - 1))


@dataclasses.dataclass
class FanoResult(Result):
    """Class membership (arXiv paper): predicted-label histograms of in- and out-of-training classes."""

    in_fano: float
    out_fano: float
    in_p_value: float
    out_p_value: float
    in_histogram: list[int]
    out_histogram: list[int]

    def summary(self) -> str:
        return (f"class membership: Fano factor in-training {self.in_fano:.2f} (p={self.in_p_value:.3g}), "
                f"out-of-training {self.out_fano:.2f} (p={self.out_p_value:.3g})")


def class_membership_test(predicted_in, predicted_out, num_classes: int) -> FanoResult:
    """Fano factors of the predicted-label histograms for images of in-training and out-of-training classes.

    A model trained on disguised data spreads predictions for an unseen class
    differently from a seen one; the p-values test each histogram against
    uniform predictions.
    """
    h_in = np.bincount(np.asarray(predicted_in).reshape(-1), minlength=num_classes)
    h_out = np.bincount(np.asarray(predicted_out).reshape(-1), minlength=num_classes)
    return FanoResult(
        in_fano=fano_factor(h_in), out_fano=fano_factor(h_out),
        in_p_value=_dispersion_p_value(h_in), out_p_value=_dispersion_p_value(h_out),
        in_histogram=h_in.tolist(), out_histogram=h_out.tolist(),
    )


@dataclasses.dataclass
class PrivacyReport(Result):
    """One setting's quality and privacy figures (the calibration report's row).

    `attacks` maps each attack's name to its result's `to_dict()`.

    Example:

    >>> r = PrivacyReport(setting="s", spec={}, fingerprint="f", plain_accuracy=0.9, disguised_accuracy=0.85,
    ...                   visual_privacy=0.8, misusability=0.1, examiner_accuracy_plain=0.9,
    ...                   attacks={"toy": {"success": 0.5, "headline": {"toy success": 0.5}}})
    >>> r.summary()
    '[s] accuracy 0.8500 (plain 0.9000, gap 5.00 pts); visual privacy 0.8000; misusability 0.1000; toy success 0.5000'
    """

    setting: str
    spec: dict
    fingerprint: str
    plain_accuracy: float
    disguised_accuracy: float
    visual_privacy: float
    misusability: float
    examiner_accuracy_plain: float
    attacks: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)

    @property
    def gap(self) -> float:
        return self.plain_accuracy - self.disguised_accuracy

    def summary(self) -> str:
        parts = [
            f"[{self.setting}] accuracy {self.disguised_accuracy:.4f} (plain {self.plain_accuracy:.4f}, "
            f"gap {100 * self.gap:.2f} pts)",
            f"visual privacy {self.visual_privacy:.4f}",
            f"misusability {self.misusability:.4f}",
        ]
        for result in self.attacks.values():
            parts += [f"{k} {v:.4f}" if v is not None else f"{k} -" for k, v in result.get("headline", {}).items()]
        return "; ".join(parts)
