"""`tfdisguise calibrate`: sweep settings; measure accuracy, privacy and attacks; write a report."""

from __future__ import annotations

import argparse

from tfdisguise.cli import args as cli_args


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("calibrate",
                              help="sweep settings; measure accuracy, privacy and attacks; write a report")
    p.add_argument("--input", required=True)
    p.add_argument("--block-sizes", type=cli_args.ints, default=(7,), help="comma-separated, e.g. 7,14")
    p.add_argument("--noise-levels", type=cli_args.floats, default=(0.0,), help="comma-separated, e.g. 0,50,100")
    p.add_argument("--rmt", type=cli_args.names, default=("orthogonal",),
                   help="comma-separated of orthogonal,projection,none")
    p.add_argument("--rmt-mode", type=cli_args.names, default=("matrix",), help="matrix,vector")
    p.add_argument("--permute", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--model", default="simple_cnn")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--limit", type=int, default=None, help="use at most this many training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attacks", type=cli_args.names, default=None,
                   help="comma-separated attack names (default: all registered attacks)")
    p.add_argument("--ks", type=cli_args.ints, default=(1, 10, 100), help="leaked pairs for the known-plaintext attack")
    p.add_argument("--attack-images", type=int, default=500)
    p.add_argument("--key-agnostic", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--key-agnostic-keys", type=int, default=16)
    p.add_argument("--key-agnostic-images", type=int, default=None, help="attacker's training images (default: all)")
    p.add_argument("--resume", action="store_true", help="reuse finished settings in --out")
    p.add_argument("--out", required=True)
    p.set_defaults(run=run)


def run(args) -> int:
    from tfdisguise.privacy.calibrate import CalibrationConfig, calibrate

    # Only when asked: the default (every registered attack) is CalibrationConfig's own.
    selection = {} if args.attacks is None else {"attacks": tuple(args.attacks)}
    config = CalibrationConfig(
        source=args.input, out=args.out, block_sizes=tuple(args.block_sizes), noise_levels=tuple(args.noise_levels),
        rmt=tuple(args.rmt), rmt_modes=tuple(args.rmt_mode), permute=(args.permute,), model=args.model,
        epochs=args.epochs, batch_size=args.batch_size, validation_fraction=args.validation_fraction,
        limit=args.limit, seed=args.seed, ks=tuple(args.ks), attack_images=args.attack_images,
        key_agnostic=args.key_agnostic, key_agnostic_keys=args.key_agnostic_keys,
        key_agnostic_images=args.key_agnostic_images, resume=args.resume, **selection,
    )
    calibrate(config, log=lambda msg: print(msg, flush=True))
    return 0
