"""`tfdisguise stream`: the owner's tf.data service (dispatcher + workers) streaming disguised batches.

The trainer reads them with `tfdisguise train --stream grpc://HOST:PORT --dataset-id NAME` and never holds the
key. The service has no transport security: run it inside the owner's VPN or behind an SSH tunnel (see
`tfdisguise.stream`).
"""

from __future__ import annotations

import json
import signal
import sys
import threading

from tfdisguise.cli import args as cli_args


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("stream", help="owner side: serve disguised batches through the tf.data service "
                                             "(fresh noise every epoch; the trainer never holds the key)")
    p.add_argument("--key", required=True, help="the owner's key file, from `tfdisguise keygen`")
    cli_args.add_source_args(p, with_split=False)
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="share of the images streamed as the validation set")
    p.add_argument("--limit", type=int, default=None, help="stream at most this many images (default: all)")
    p.add_argument("--dispatcher-port", type=int, default=5050, help="the dispatcher's port (0: any free one)")
    p.add_argument("--workers", type=int, default=1, help="tf.data service workers in this process")
    p.add_argument("--dataset-id", default="tfdisguise", help="the name the trainer asks for")
    p.add_argument("--batch-size", type=int, default=128, help="images per streamed batch")
    cli_args.add_augment_arg(p, "; fresh every epoch")
    p.add_argument("--work-dir", default=None,
                   help="the dispatcher's journal (fault-tolerant restarts); it holds key material, so keep it "
                        "on the owner's disk (default: none, no journal)")
    p.set_defaults(run=run)


def run(args) -> int:
    from tfdisguise import datasets, stream
    from tfdisguise.key import Key

    key = Key.load(args.key)
    augment = cli_args.augment_layer(args.augment)
    train = datasets.load(args.input, "train", validation_fraction=args.validation_fraction, seed=args.seed,
                          limit=args.limit)
    val = datasets.load(args.input, "validation", validation_fraction=args.validation_fraction, seed=args.seed)
    service = stream.serve(key, train, validation=val, port=args.dispatcher_port, workers=args.workers,
                           name=args.dataset_id, batch_size=args.batch_size, augment=augment,
                           work_dir=args.work_dir)
    info = service.info
    print(json.dumps({"dispatcher": service.target, "dataset_id": args.dataset_id, "images": info["count"],
                      "validation_images": info["validation_count"], "batch_size": info["batch_size"],
                      "element_spec": {"image": ["float32", [None, *info["image_shape"]]], "label": ["int64", [None]]},
                      "fingerprint": key.fingerprint}), flush=True)
    print(f"streaming {info['count']} + {info['validation_count']} disguised images from {args.input} with key "
          f"{key.fingerprint} on {service.target} ({args.workers} worker(s)); train with `tfdisguise train "
          f"--stream {service.target} --dataset-id {args.dataset_id} ...`; Ctrl-C or SIGTERM stops", file=sys.stderr,
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    service.stop()
    print("stream stopped", file=sys.stderr, flush=True)
    return 0
