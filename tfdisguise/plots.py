"""Pictures for people: sample grids. Plot functions return a Figure; `save_figure` writes it.

Example:

>>> import numpy as np
>>> fig = preview_grid(np.zeros((3, 8, 8, 1), "uint8"), np.ones((3, 8, 8, 1), "float32"))
>>> len(fig.axes)
6
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

__all__ = ["new_figure", "preview_grid", "image_grid", "save_figure", "to_display"]


def new_figure(nrows=1, ncols=1, figsize=(6, 4), squeeze=True):
    """(Figure, axes) without pyplot: no GUI backend, no global figure registry to leak into.

    Notebooks still show the Figure inline.
    """
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def to_display(image: np.ndarray) -> np.ndarray:
    """Scales one image to 0..1 for display (disguised values are not in 0..255)."""
    image = np.asarray(image, dtype=np.float64)
    lo, hi = image.min(), image.max()
    image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return image[..., 0] if image.shape[-1] == 1 else image


def image_grid(rows: list[np.ndarray], row_titles: list[str], title: str | None = None):
    """A Figure with one row per array of images, each image min-max scaled."""
    n = max(len(r) for r in rows)
    fig, axes = new_figure(len(rows), n, figsize=(1.3 * n + 1.2, 1.4 * len(rows) + 0.4), squeeze=False)
    for i, (images, label) in enumerate(zip(rows, row_titles)):
        for j in range(n):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                ax.imshow(to_display(images[j]), cmap="gray", interpolation="nearest")
            else:
                ax.axis("off")
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def preview_grid(originals: np.ndarray, disguised: np.ndarray, title: str | None = None):
    """Originals above, their disguised versions below."""
    return image_grid([originals, disguised], ["original", "disguised"], title)


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """Writes `fig` to `path` atomically (PNG unless the suffix says otherwise)."""
    from tfdisguise import io

    fmt = (os.path.splitext(path)[1] or ".png").lstrip(".")
    with io.atomic_file(path, binary=True) as f:
        fig.savefig(f, dpi=dpi, format=fmt)
    return path
