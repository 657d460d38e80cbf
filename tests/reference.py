"""Kept for tests that still `from reference import ...`; the per-image numpy
reference lives in `tfdisguise.mechanisms.reference` (each step provides its own
`Step.reference`)."""

from tfdisguise.mechanisms.reference import disguise_batch, disguise_image, join_blocks, split_blocks

__all__ = ["disguise_batch", "disguise_image", "join_blocks", "split_blocks"]
