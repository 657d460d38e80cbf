"""`tfdisguise disguise`: disguise a data set into key-free TFRecord shards and a manifest, for upload."""

from __future__ import annotations

import sys

from tfdisguise.cli import args as cli_args
from tfdisguise.cli import console


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("disguise", help="disguise a data set into TFRecord shards + manifest for upload")
    p.add_argument("--key", required=True, help="the owner's key file, from `tfdisguise keygen`")
    cli_args.add_source_args(p)
    p.add_argument("--out", required=True,
                   help="the directory for the shards and manifest.json (the upload); new, empty, or with --overwrite")
    p.add_argument("--shard-size", type=int, default=10000, help="images per TFRecord shard")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds a disguised data set (ours, nothing else); never anything else")
    p.add_argument("--copies", type=int, default=1,
                   help="write the data set this many times over, each copy with fresh noise (and, with --augment, "
                        "a fresh augmentation): more to train on, at K times the size")
    cli_args.add_augment_arg(p, "; fresh for every copy")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="how the shards store disguised values; float16 halves them (docs/RESULTS.md measures "
                        "what it costs)")
    p.add_argument("--runner", default=None,
                   help="disguise on Apache Beam with this runner (DirectRunner, FlinkRunner, SparkRunner, "
                        "DataflowRunner, ...): workers load the key file and the source themselves "
                        "(needs the `beam` extra) (default: none, one process here)")
    p.add_argument("--beam_pipeline_options", "--beam-pipeline-options", dest="beam_pipeline_options", default=None,
                   help="with --runner: Beam options as NAME=VALUE,NAME=VALUE, e.g. "
                        "direct_num_workers=2,direct_running_mode=multi_processing (default: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from tfdisguise import datasets
    from tfdisguise.key import Key
    from tfdisguise.shards import check_output_dir, export_disguised

    if args.runner is None and args.beam_pipeline_options:
        raise ValueError("--beam_pipeline_options applies to a Beam runner: pass --runner too "
                         "(e.g. --runner DirectRunner).")
    if args.runner is not None:
        return _run_on_beam(args)
    key = Key.load(args.key)
    # Before any work, and in the command's own words: --overwrite, not the library's overwrite=True.
    check_output_dir(args.out, overwrite=args.overwrite, option="--overwrite")
    data = datasets.load(args.input, split=args.split, validation_fraction=args.validation_fraction,
                         seed=args.seed, limit=args.limit)
    print(f"disguising {len(data)} images from {args.input} with key {key.fingerprint}", file=sys.stderr)
    # The bar redraws itself; in a log it would be hundreds of lines, and the summary below says the same.
    progress = not args.quiet and console.shows_progress_bars()
    augment = cli_args.augment_layer(args.augment)
    manifest = export_disguised(data.to_dataset(), key, args.out, shard_size=args.shard_size,
                                class_names=data.class_names, overwrite=args.overwrite, progress=progress,
                                total=len(data), copies=args.copies, augment=augment, dtype=args.dtype)
    print(f"wrote {manifest['count']} disguised images in {len(manifest['shards'])} shard(s) to {args.out}")
    return 0


def _run_on_beam(args) -> int:
    from tfdisguise.beam import check_pipeline_options, disguise_on_beam

    if args.copies != 1 or args.augment:
        raise ValueError("--copies and --augment are not available with --runner yet: export them without "
                         "--runner (one process), or run the pipeline once per copy into separate outputs.")
    import logging

    # Beam's own INFO lines (gRPC channels, worker start-up) would bury the progress; the workers' per-shard
    # lines and the final counts stay.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # Before any work, in the command's own words.
    check_pipeline_options(args.beam_pipeline_options, option="--beam_pipeline_options")
    print(f"disguising {args.input} on Beam ({args.runner}); the workers load {args.key}", file=sys.stderr)
    manifest = disguise_on_beam(args.input, args.key, args.out, split=args.split,
                                validation_fraction=args.validation_fraction, seed=args.seed, limit=args.limit,
                                shard_size=args.shard_size, dtype=args.dtype, runner=args.runner,
                                pipeline_options=args.beam_pipeline_options, overwrite=args.overwrite)
    print(f"wrote {manifest['count']} disguised images in {len(manifest['shards'])} shard(s) to {args.out}")
    return 0
