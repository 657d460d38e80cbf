"""`tfdisguise preview`: a PNG grid, originals above and disguised below."""

from __future__ import annotations

from tfdisguise.cli import args as cli_args


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser("preview", help="PNG grid: originals above, disguised below")
    p.add_argument("--key", required=True, help="the owner's key file, from `tfdisguise keygen`")
    cli_args.add_source_args(p, with_split=False)
    p.add_argument("--out", required=True, help="the PNG file to write, e.g. preview.png")
    p.add_argument("--n", type=cli_args.positive_int, default=8, help="number of images (default 8)")
    p.set_defaults(run=run)


def run(args) -> int:
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
