"""`tfdisguise train`: train a classifier on plain data, on disguised shards, or on a source and a key."""

from __future__ import annotations

import argparse
import os

from tfdisguise.cli import args as cli_args


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("train",
                              help="train a classifier on plain data, on disguised shards, or on a source + key")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="SRC (as for disguise); with --key it is disguised on the fly by wrap()")
    src.add_argument("--shards", help="a directory written by `tfdisguise disguise`")
    src.add_argument("--stream", metavar="DIR",
                     help="the directory (local or gs://...) a `tfdisguise stream --out DIR` pushes to: epoch e trains "
                          "on the owner's epoch e, fresh noise every epoch; this process never holds the key")
    p.add_argument("--stream-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="with --stream: how long to wait for the stream to start and for each next epoch to arrive")
    # The tf.data service design's flag: refused with an explanation (see tfdisguise.stream), not ignored.
    p.add_argument("--dataset-id", default=None, help=argparse.SUPPRESS)
    p.add_argument("--key", help="key file: train on --input disguised with it (default: none, plain training)")
    p.add_argument("--model", default="simple_cnn",
                   help=cli_args.MODEL_HELP)
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--batch-size", type=int, default=128, help="images per training step")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's initial rate (cosine decay to 0)")
    p.add_argument("--validation-fraction", type=float, default=0.2, help="share of the images held out")
    p.add_argument("--limit", type=cli_args.positive_int, default=None,
                   help="train on at most this many images (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the shuffle and the initial weights")
    recipe = p.add_argument_group("recipe (each applies to plain and disguised training alike)")
    recipe.add_argument("--model-options", type=cli_args.options, default={}, metavar="K=V,...",
                        help="options for the model family, e.g. lr_multiplier=100 for block_adapter or "
                             "dim=64,depth=4 for block_vit (default: none)")
    cli_args.add_augment_arg(recipe, "; with --input only (for shards: `tfdisguise disguise --augment`)")
    recipe.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing (default: 0, off)")
    recipe.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: 0, Adam)")
    recipe.add_argument("--warmup-epochs", type=float, default=0.0,
                        help="linear learning-rate warm-up before the cosine decay (default: 0)")
    scale = p.add_argument_group("devices")
    scale.add_argument("--strategy", choices=("none", "mirrored"), default="none",
                       help="tf.distribute strategy: mirrored over the local GPUs (or --cpu-devices); several "
                            "machines: see the README")
    scale.add_argument("--cpu-devices", type=int, default=None,
                       help="split the CPU into this many logical devices (for --strategy mirrored without GPUs) "
                            "(default: one)")
    p.add_argument("--out", required=True,
                   help="the run directory to write: model.keras, history.json/png, disguise.json")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run's files in --out (model.keras, history.json/png, disguise.json); "
                        "without it, such an --out is refused before training starts")
    p.set_defaults(run=run)


# What a run writes into --out: the only files --overwrite replaces (or, for a plain run, removes: disguise.json).
RUN_FILES = ("model.keras", "history.json", "history.png", "disguise.json")


def check_out(out: str, overwrite: bool) -> None:
    """Refuses, before any training, an --out that is a file or holds an earlier run (unless --overwrite)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--out {out} exists and is not a directory; choose another --out.")
    earlier = [name for name in RUN_FILES if os.path.lexists(os.path.join(out, name))]
    if earlier and not overwrite:
        raise FileExistsError(f"--out {out} holds an earlier run ({', '.join(earlier)}); refusing to overwrite it. "
                              f"Pass --overwrite to replace that run, or choose another --out.")


def run(args) -> int:
    from tfdisguise.train import TrainConfig, split_cpu, train_and_save

    check_out(args.out, args.overwrite)  # minutes of training must not end in a refusal, nor in a silent overwrite

    if args.cpu_devices:
        split_cpu(args.cpu_devices)  # before anything starts TensorFlow's devices

    if args.dataset_id is not None:
        raise ValueError("--dataset-id belonged to the tf.data service stream, which is gone: the owner's dispatcher "
                         "let anyone who reached it run code beside the key. The owner now pushes key-free epochs "
                         "to a directory (`tfdisguise stream --out DIR`); train with `tfdisguise train --stream DIR`.")
    if args.augment and args.shards:
        raise ValueError("`--augment` applies to the plain images before the disguise, and shards are disguised "
                         "already: augment them when you make them (`tfdisguise disguise --augment ... --copies K`).")
    config = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, seed=args.seed, model_options=args.model_options,
                         augment=args.augment, label_smoothing=args.label_smoothing,
                         weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                         strategy=args.strategy)
    # train_and_save draws a bar on a terminal and one line per epoch in a log (train.verbosity).
    result = train_and_save(args.out, config, source=args.input, key_path=args.key, shards=args.shards,
                            stream=args.stream, stream_timeout=args.stream_timeout,
                            validation_fraction=args.validation_fraction, limit=args.limit)
    stale = os.path.join(args.out, "disguise.json")
    if args.input and not args.key and os.path.lexists(stale):
        os.remove(stale)  # an earlier disguised run's identity would make `tfdisguise export` misread this plain model
    print(result.summary())
    files = ", ".join(os.path.join(args.out, n) for n in ("model.keras", "history.json", "history.png"))
    print(f"wrote {files}")
    return 0
