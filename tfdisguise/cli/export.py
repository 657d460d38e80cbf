"""`tfdisguise export`: export a trained model as a SavedModel version for TF Serving."""

from __future__ import annotations


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a trained model as a SavedModel for TF Serving")
    p.add_argument("--model", required=True, help="a .keras file from `tfdisguise train`")
    p.add_argument("--base", default="saved_models", help="base directory (default saved_models)")
    p.add_argument("--name", required=True, help="the served model's name")
    p.add_argument("--version", type=int, default=None,
                   help="the version number to write (default: one more than the newest under --base/--name)")
    identity = p.add_mutually_exclusive_group()
    identity.add_argument("--key", help="owner's key file: its spec and fingerprint are recorded, and the written "
                                        "SavedModel is scanned for its material (refused and deleted if found) "
                                        "(default: none)")
    identity.add_argument("--manifest", help="the shards' manifest.json the model was trained on (default: none)")
    p.set_defaults(run=run)


def run(args) -> int:
    from tfdisguise.export import export_trained

    path = export_trained(args.model, args.base, args.name, version=args.version, key_path=args.key,
                          manifest=args.manifest)
    print(f"exported {args.model} to {path} (signature serving_default: image -> probabilities, class_id)")
    return 0
