"""`tfdisguise train`: train a classifier on plain data, on disguised shards, or on a source and a key."""

from __future__ import annotations


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("train",
                              help="train a classifier on plain data, on disguised shards, or on a source + key")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="SRC (as for disguise); with --key it is disguised on the fly by wrap()")
    src.add_argument("--shards", help="a directory written by `tfdisguise disguise`")
    p.add_argument("--key", help="key file: train on --input disguised with it")
    p.add_argument("--model", default="simple_cnn", help="simple_cnn, resnet20 or keras.applications.<Name>")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(run=run)


def run(args) -> int:
    from tfdisguise.train import TrainConfig, train_and_save

    config = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, seed=args.seed)
    # train_and_save draws a bar on a terminal and one line per epoch in a log (train.verbosity).
    result = train_and_save(args.out, config, source=args.input, key_path=args.key, shards=args.shards,
                            validation_fraction=args.validation_fraction, limit=args.limit)
    print(result.summary())
    print(f"wrote {args.out}/model.keras, history.json, history.png")
    return 0
