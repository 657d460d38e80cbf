"""`tfdisguise predict`: disguise images locally and query a served model (gRPC or REST).

TLS as the Python client has it (`tls.ClientTLS`): --ca-cert checks the
server's certificate, --client-cert and --client-key answer a server that
verifies clients. With any of them, REST goes over https://.
"""

from __future__ import annotations


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("predict", help="disguise images locally and query a served model",
                              description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--key", required=True,
                   help="the owner's key file: images are disguised with it here, before they leave")
    p.add_argument("--server", required=True,
                   help="HOST:PORT (gRPC), or http://HOST:PORT / https://HOST:PORT (REST)")
    p.add_argument("--model", required=True, help="the served model's name (serve's --model_name)")
    p.add_argument("--version", type=int, default=None,
                   help="the model version to ask for (default: the newest the server has)")
    p.add_argument("--rest", action="store_true", help="use the REST API")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds for each request, retries and decoding the answer included (default 10)")
    p.add_argument("--batch-size", type=int, default=64, help="images per request (default 64)")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight at once (default 1)")
    tls = p.add_argument_group("TLS (as the server's --ssl_config_file asks)")
    tls.add_argument("--tls", action="store_true", help="use TLS, trusting the system's CAs (implied by the others)")
    tls.add_argument("--ca-cert", help="PEM file of the CA that signs the server's certificate (default: the "
                                       "system's CAs)")
    tls.add_argument("--client-cert", help="PEM file of this client's certificate (for client_verify) (default: none)")
    tls.add_argument("--client-key", help="PEM file of this client's private key (with --client-cert) "
                                          "(default: none)")
    p.add_argument("images", nargs="+", help="image files (.png/.jpg), .npy, or .npz with x")
    p.set_defaults(run=run)


def target_and_tls(args):
    """The client's target and `ClientTLS` (or None) from the command's flags."""
    from tfdisguise.serving.tls import ClientTLS

    wants_tls = args.tls or any((args.ca_cert, args.client_cert, args.client_key))
    tls = ClientTLS(args.ca_cert, args.client_cert, args.client_key) if wants_tls else None
    target = args.server
    if args.rest and "://" not in target:
        target = f"{'https' if tls else 'http'}://{target}"
    if tls and not target.startswith("https://") and "://" in target:
        raise ValueError(f"--server {args.server} is plain HTTP, but TLS flags were given; use https://.")
    if target.startswith("https://") and tls is None:
        tls = ClientTLS()
    return target, tls


def run(args) -> int:
    import numpy as np

    from tfdisguise.datasets import read_images
    from tfdisguise.key import Key
    from tfdisguise.serving.client import DisguisedClient

    key = Key.load(args.key)
    # Untrusted files: regular files only (a FIFO would hang here), sizes checked before decoding.
    names, images = read_images(args.images, key.spec.image_shape)
    target, tls = target_and_tls(args)
    with DisguisedClient(target, args.model, key, version=args.version, timeout=args.timeout, tls=tls,
                         batch_size=args.batch_size) as client:
        out = client.predict(images, concurrency=args.concurrency)
    probs = out.get("probabilities")
    predicted = []
    for i, name in enumerate(names):
        cls = int(out["class_id"][i]) if "class_id" in out else int(np.argmax(probs[i]))
        predicted.append(cls)
        conf = f" (p={float(probs[i][cls]):.3f})" if probs is not None else ""
        print(f"{name}\tclass {cls}{conf}")
    labels = _labels(args.images, names)
    known = [(p, y) for p, y in zip(predicted, labels) if y is not None]
    if known:
        right = sum(p == y for p, y in known)
        print(f"accuracy {right / len(known):.4f} ({right} of {len(known)} labelled images)")
    return 0


def _labels(paths, names) -> list:
    """The label of each queried image: `y` of an .npz that has one (as `tfdisguise disguise --input` reads it),
    None for images without one."""
    from tfdisguise.datasets import read_npz

    labels = []
    for path in paths:
        count = sum(1 for n in names if n == path or n.startswith(f"{path}["))
        y = read_npz(path, (), optional=("y",)).get("y") if path.endswith(".npz") else None
        if y is not None and y.ndim == 1 and len(y) == count and y.dtype.kind in "iu":
            labels += [int(v) for v in y]
        else:
            labels += [None] * count
    return labels
