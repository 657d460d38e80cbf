"""`tfdisguise train`: train a classifier on plain data, on disguised shards, or on a source and a key."""

from __future__ import annotations

import os


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("train",
                              help="train a classifier on plain data, on disguised shards, or on a source + key")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="SRC (as for disguise); with --key it is disguised on the fly by wrap()")
    src.add_argument("--shards", help="a directory written by `tfdisguise disguise`")
    p.add_argument("--key", help="key file: train on --input disguised with it")
    p.add_argument("--model", default="simple_cnn",
                   help="a registered model (tfdisguise.models.MODEL_NAMES) or keras.applications.<Name>")
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--batch-size", type=int, default=128, help="images per training step")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's initial rate (cosine decay to 0)")
    p.add_argument("--validation-fraction", type=float, default=0.2, help="share of the images held out")
    p.add_argument("--limit", type=int, default=None, help="train on at most this many images (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the shuffle and the initial weights")
    p.add_argument("--out", required=True, help="run directory: model.keras, history.json/png, disguise.json")
    p.set_defaults(run=run)


def run(args) -> int:
    from tfdisguise.train import TrainConfig, train_and_save

    config = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, seed=args.seed)
    # train_and_save draws a bar on a terminal and one line per epoch in a log (train.verbosity).
    result = train_and_save(args.out, config, source=args.input, key_path=args.key, shards=args.shards,
                            validation_fraction=args.validation_fraction, limit=args.limit)
    print(result.summary())
    files = ", ".join(os.path.join(args.out, n) for n in ("model.keras", "history.json", "history.png"))
    print(f"wrote {files}")
    return 0
