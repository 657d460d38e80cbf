"""`tfdisguise predict`: disguise images locally and query a served model (gRPC or REST)."""

from __future__ import annotations


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("predict", help="disguise images locally and query a served model")
    p.add_argument("--key", required=True)
    p.add_argument("--server", required=True, help="HOST:PORT (gRPC) or http://HOST:PORT (REST)")
    p.add_argument("--model", required=True)
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--rest", action="store_true", help="use the REST API")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("images", nargs="+", help="image files (.png/.jpg), .npy, or .npz with x")
    p.set_defaults(run=run)


def run(args) -> int:
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
