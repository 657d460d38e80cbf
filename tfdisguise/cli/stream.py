"""`tfdisguise stream`: the owner pushes epochs of disguised shards, each with fresh noise, to a directory.

The trainer reads that directory with `tfdisguise train --stream DIR` and never holds the key. Nothing here
listens on the network: the owner's machine only writes files (see `tfdisguise.stream` for why the tf.data
service no longer runs on the owner's side).
"""

from __future__ import annotations

import argparse
import sys

from tfdisguise.cli import args as cli_args

# The flags of the tf.data service design that this command replaced: refused with an explanation, not ignored.
_RETIRED = ("--dispatcher-port", "--workers", "--dataset-id", "--work-dir")


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("stream", help="owner side: push epochs of disguised shards (fresh noise every "
                                             "epoch) to a directory the trainer reads; no key leaves, no port opens")
    p.add_argument("--key", required=True, help="the owner's key file, from `tfdisguise keygen`")
    cli_args.add_source_args(p, with_split=False)
    # --out and --epochs are checked in run(), so that the old design's flags get their explanation first.
    p.add_argument("--out", default=None, metavar="DIR",
                   help="(required) a new or empty directory, local or gs://..., that the trainer reads: "
                        "epoch-00000/, epoch-00001/, ..., validation/, stream.json")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="(required) epochs to push, each with fresh "
                                                                         "noise")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="share of the images pushed once as the validation set")
    p.add_argument("--limit", type=cli_args.positive_int, default=None,
                   help="stream at most this many training images (default: all)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="images per batch when disguising; stream.read batches by it unless told otherwise "
                        "(`train --stream` uses its own --batch-size)")
    cli_args.add_augment_arg(p, "; fresh every epoch")
    p.add_argument("--ahead", type=int, default=None, metavar="K",
                   help="stay at most this many epochs ahead of the trainer, which marks each epoch it starts in "
                        "DIR/progress/ (default: none, write every epoch at once)")
    p.add_argument("--shard-size", type=int, default=10000, help="images per TFRecord shard")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="how shards store values")
    for flag in _RETIRED:
        p.add_argument(flag, default=None, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def run(args) -> int:
    retired = [flag for flag in _RETIRED if getattr(args, flag[2:].replace("-", "_")) is not None]
    if retired:
        raise ValueError(
            f"{', '.join(retired)}: `tfdisguise stream` no longer runs a tf.data service on the owner's machine "
            "(whoever reaches a dispatcher can run code on its workers, next to the key, and read the registered "
            "graph, which held the key). It now pushes key-free epochs to a directory: `tfdisguise stream --key K "
            "--input SRC --out DIR --epochs N`, and the trainer runs `tfdisguise train --stream DIR`.")
    if args.out is None or args.epochs is None:
        raise ValueError("`tfdisguise stream` needs --out DIR (where the epochs go) and --epochs N. Received: "
                         f"--out={args.out!r}, --epochs={args.epochs!r}")
    from tfdisguise import datasets, stream
    from tfdisguise.key import Key

    key = Key.load(args.key)
    augment = cli_args.augment_layer(args.augment)
    train = datasets.load(args.input, "train", validation_fraction=args.validation_fraction, seed=args.seed,
                          limit=args.limit)
    val = datasets.load(args.input, "validation", validation_fraction=args.validation_fraction, seed=args.seed)

    def done(epoch, manifest):
        if epoch == 0:
            print(f"pushing {args.epochs} epoch(s) of {len(train)} disguised images (+ {len(val)} validation images "
                  f"once) from {args.input} with key {key.fingerprint} to {args.out}; the trainer can start: "
                  f"`tfdisguise train --stream {args.out} ...`", file=sys.stderr, flush=True)
        print(f"epoch {epoch + 1}/{args.epochs}: {manifest['count']} images in "
              f"{stream.epoch_dir(args.out, epoch)} ({manifest['seconds']:.1f} s)", file=sys.stderr, flush=True)

    info = stream.push(key, train, args.out, epochs=args.epochs, validation=val if len(val) else None,
                       batch_size=args.batch_size, augment=augment, ahead=args.ahead, seed=args.seed,
                       shard_size=args.shard_size, dtype=args.dtype, on_epoch=done)
    print(f"pushed {info['epochs']} epoch(s) of {info['count']} images and {info['validation_count']} validation "
          f"images to {args.out}", file=sys.stderr, flush=True)
    return 0
