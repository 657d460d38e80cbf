"""`tfdisguise keygen`: generate a key file (mode 0600)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from tfdisguise.cli import args as cli_args


class _Recommended:
    """Marks an option left at its default, which then comes from Spec.recommended for the image shape.

    Not a string: argparse would run a string default through the option's type.
    """

    def __repr__(self):
        return "recommended"

    __str__ = __repr__


RECOMMENDED = _Recommended()


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("keygen", help="generate a key file (mode 0600)")
    p.add_argument("--image-shape", type=cli_args.ints, required=True,
                   help="the images' H,W,C, e.g. 28,28,1 or 32,32,3 (required)")
    p.add_argument("--block-size", type=cli_args.block, default=RECOMMENDED,
                   help="N or H,W, or 'full' (one block = whole-image RMT); the default is the recommended setting for "
                        "the shape: 7 for 28x28, else 4 (Spec.recommended)")
    p.add_argument("--rmt", choices=("orthogonal", "projection", "none"), default=RECOMMENDED,
                   help="kind of the secret matrix per block position; with no mechanism flag at all the "
                        "recommended setting is block scrambling per position without RMT (Spec.recommended), with "
                        "any other mechanism flag RMT is orthogonal unless this says otherwise")
    p.add_argument("--rmt-mode", choices=("matrix", "vector"), default="matrix",
                   help="matrix: B @ R per channel (R is bw x bw); vector: the flattened block times a d x d R")
    p.add_argument("--permute", action=argparse.BooleanOptionalAction, default=True,
                   help="keyed permutation of block positions (left out when there is one block)")
    p.add_argument("--noise", type=float, default=RECOMMENDED,
                   help="noise level N on the 0..255 scale; the default is the recommended level for the shape: "
                        "100 for 28x28, else 25")
    p.add_argument("--noise-position", choices=("after", "before"), default="after",
                   help="add the noise after the transforms (poster) or before them (arXiv paper)")
    p.add_argument("--max-plan-bytes", type=_byte_count, default=2_000_000_000, metavar="BYTES",
                   help="refuse a spec whose plan (its matrices and tables) needs more memory than this many bytes; "
                        "2e9 and 2000000000 both work")
    p.add_argument("--aes", action="store_true",
                   help="add keyed AES-256-ECB over each pixel block (blocks of >= 16 bytes; use with --rmt none for "
                        "AES alone)")
    p.add_argument("--scramble", choices=("none", "shared", "per-position"), default=RECOMMENDED,
                   help="add Kiya-style block scrambling (rotation, flip, negative-positive, channel shuffle), drawn "
                        "once for all blocks (shared) or for each block position (per-position)")
    p.add_argument("--negpos-hash", action="store_true",
                   help="add the hashed negative-positive step (each block inverted by a keyed hash of its content)")
    p.add_argument("--out", required=True,
                   help="the key file to write (mode 0600; missing directories are made 0700); keep it out of "
                        "version control (required)")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing key file (whatever was disguised with it becomes unusable)")
    p.set_defaults(run=run)


def run(args) -> int:
    from tfdisguise.key import Key
    from tfdisguise.spec import Spec

    if len(args.image_shape) != 3:
        raise ValueError(f"--image-shape must be H,W,C. Received: {args.image_shape}")
    # Only what the user gave: Spec.recommended fills the rest (and keeps RMT as the base once a mechanism is named).
    given = {name: value for name, value in (("block_size", args.block_size), ("noise", args.noise),
                                             ("rmt", args.rmt), ("scramble", args.scramble))
             if value is not RECOMMENDED}
    if "scramble" in given:
        given["scramble"] = given["scramble"].replace("-", "_")
    given.update({name: True for name in ("aes", "negpos_hash") if getattr(args, name)})
    spec = Spec.recommended(args.image_shape, rmt_mode=args.rmt_mode, permute=args.permute,
                            noise_position=args.noise_position, max_plan_bytes=args.max_plan_bytes, **given)
    if os.path.lexists(args.out) and not args.force:  # before generating: the library's message names overwrite=True
        raise FileExistsError(f"Key file {args.out} already exists; refusing to overwrite it (a lost key makes "
                              f"everything disguised with it unusable). Pass --force to replace it.")
    key = Key.generate(spec)
    key.save(args.out, overwrite=args.force)
    warn_if_tracked(args.out)
    gh, gw = spec.grid
    print(f"wrote {args.out} (mode 0600): fingerprint {key.fingerprint}")
    print(f"  image {spec.image_shape}, {gh}x{gw} = {spec.num_blocks} blocks of {spec.block_size[0]}x"
          f"{spec.block_size[1]}: {spec.describe().split(': ', 1)[1]}")
    print(f"  cost: {spec.cost().summary()}")
    print("  pixels: uint8, or float on the 0..255 scale (the noise level's scale; images in 0..1 are refused)")
    print("  how this setting fares against each attacker: docs/RESULTS.md, or run `tfdisguise calibrate`")
    return 0


def _byte_count(text: str) -> int:
    """A whole number of bytes, also written as 2e9."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bytes such as 2000000000 or 2e9, got {text!r}") \
            from None
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number of bytes, got {text!r}")
    return int(value)


def warn_if_tracked(path: str) -> bool:
    """Warns on stderr when `path` lies in a git work tree that does not ignore it; True when it warned.

    A key committed by accident is a key published. A cheap, best-effort check: without git, outside a work
    tree, or when git fails, it says nothing.
    """
    git = shutil.which("git")
    if git is None:
        return False
    folder = os.path.dirname(os.path.abspath(path))
    try:
        inside = subprocess.run([git, "-C", folder, "rev-parse", "--is-inside-work-tree"], capture_output=True,
                                text=True, timeout=5)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return False
        ignored = subprocess.run([git, "-C", folder, "check-ignore", "-q", os.path.abspath(path)],
                                 capture_output=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return False
    if ignored.returncode != 1:  # 0: ignored; 128: git could not tell
        return False
    print(f"warning: {path} is inside a git work tree that does not ignore it: a committed key is a published key. "
          f"Add it to .gitignore, or keep keys outside the repository.", file=sys.stderr)
    return True
