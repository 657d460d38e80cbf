"""`tfdisguise keygen`: generate a key file (mode 0600)."""

from __future__ import annotations

import argparse

from tfdisguise.cli import args as cli_args


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("keygen", help="generate a key file (mode 0600)")
    p.add_argument("--image-shape", type=cli_args.ints, required=True, help="H,W,C, e.g. 32,32,3")
    p.add_argument("--block-size", type=cli_args.block, default=None, help="N or H,W; 'full' (default) = whole image")
    p.add_argument("--rmt", choices=("orthogonal", "projection", "none"), default="orthogonal")
    p.add_argument("--rmt-mode", choices=("matrix", "vector"), default="matrix")
    p.add_argument("--permute", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--noise", type=float, default=0.0, help="noise level N on the 0..255 scale")
    p.add_argument("--noise-position", choices=("after", "before"), default="after")
    p.add_argument("--aes", action="store_true",
                   help="add keyed AES-256-ECB over each pixel block (blocks of >= 16 bytes; use with --rmt none for "
                        "AES alone)")
    p.add_argument("--scramble", choices=("none", "shared", "per-position"), default="none",
                   help="add Kiya-style block scrambling (rotation, flip, negative-positive, channel shuffle), drawn "
                        "once for all blocks (shared) or for each block position (per-position)")
    p.add_argument("--negpos-hash", action="store_true",
                   help="add the hashed negative-positive step (each block inverted by a keyed hash of its content)")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")
    p.set_defaults(run=run)


def run(args) -> int:
    from tfdisguise.key import Key
    from tfdisguise.spec import Spec

    if len(args.image_shape) != 3:
        raise ValueError(f"--image-shape must be H,W,C. Received: {args.image_shape}")
    spec = Spec.create(args.image_shape, args.block_size, rmt=args.rmt, rmt_mode=args.rmt_mode, permute=args.permute,
                       noise=args.noise, noise_position=args.noise_position, aes=args.aes,
                       scramble=args.scramble.replace("-", "_"), negpos_hash=args.negpos_hash)
    key = Key.generate(spec)
    key.save(args.out, overwrite=args.force)
    print(f"wrote {args.out} (mode 0600): fingerprint {key.fingerprint}, {spec.describe()}, image {spec.image_shape}")
    return 0
