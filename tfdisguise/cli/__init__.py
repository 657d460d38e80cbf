"""The `tfdisguise` command.

Each subcommand is one module with `register_subparser(subparsers)` and
`run(args) -> int`; it parses its arguments and calls the library. Modules load
TensorFlow, Keras and grpc only inside `run`, so `tfdisguise --help` is quick.

>>> args = build_parser().parse_args(["keygen", "--image-shape", "28,28,1", "--block-size", "7", "--out", "k.json"])
>>> args.command, args.image_shape, args.block_size
('keygen', (28, 28, 1), 7)
"""

from __future__ import annotations

import argparse
import re
import sys

from tfdisguise import __version__
from tfdisguise.cli import (
    calibrate,
    console,
    disguise,
    export,
    keygen,
    predict,
    preview,
    serve,
    stream,
    train,
)

__all__ = ["COMMANDS", "build_parser", "main"]

# In the order of the workflow, which is the order of `tfdisguise --help`.
COMMANDS = (keygen, disguise, preview, stream, train, calibrate, export, serve, predict)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends an option's default to its help the way a user would type it (`7,14`, not `(7, 14)`).

    Help that already names its default, and options without one (None, a switch that is off), are left alone;
    a required option says so instead.

    >>> parser = argparse.ArgumentParser(prog="x", formatter_class=_DefaultsFormatter)
    >>> _ = parser.add_argument("--sizes", default=(7, 14), help="block sizes")
    >>> _ = parser.add_argument("--keys", default=3, help="keys per setting (default 3)")
    >>> _ = parser.add_argument("--out", help="where")
    >>> help_text = " ".join(parser.format_help().split())
    >>> "block sizes (default: 7,14)" in help_text, "(default 3) (default" in help_text, "(default: None)" in help_text
    (True, False, False)
    """

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if action.required and action.option_strings and "required" not in text:
            return f"{text} (required)".strip()
        # Identity, not ==: a default of 0 (a seed, a port) is a default to show, unlike a switch that is off.
        if ("default" in text.lower() or any(default is v for v in (None, False, argparse.SUPPRESS))
                or not action.option_strings):
            return text
        if isinstance(default, (tuple, list)):
            default = ",".join("none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
                               for v in default)
        return f"{text} (default: {str(default).replace('%', '%%')})".strip()


class _Parser(argparse.ArgumentParser):
    """Every subcommand's --help shows each option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfdisguise",
                                     description="Disguise images with a secret key for private deep learning.")
    parser.add_argument("--version", action="version", version=f"tfdisguise {__version__}")
    parser.add_argument("--log-level", choices=console.LOG_LEVELS, default="info",
                        help="tfdisguise's log messages (default info); 'debug' also shows TensorFlow's")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.register_subparser(subparsers)
    for sub in subparsers.choices.values():
        _say_which_is_required(sub)
    return parser


def _say_which_is_required(parser: argparse.ArgumentParser) -> None:
    """Each option of a required either-or group says so in its help (argparse marks none of them required)."""
    for group in parser._mutually_exclusive_groups:
        if group.required:
            flags = [a.option_strings[0] for a in group._group_actions]
            either = ", ".join(flags[:-1]) + f" or {flags[-1]}"
            for action in group._group_actions:
                if action.help is not argparse.SUPPRESS and "required" not in (action.help or ""):
                    action.help = f"{action.help or ''} (one of {either} is required)".strip()


def main(argv=None) -> int:
    """Runs `tfdisguise` with `argv` (default: the command line) and returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if unknown:
        if not getattr(args, "takes_unknown_flags", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.unknown_flags = tuple(unknown)
    console.configure_logging(args.log_level)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("tfdisguise: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        print(f"tfdisguise {args.command}: error: {in_flag_names(str(e), parser, args.command)}", file=sys.stderr)
        return 1


def in_flag_names(message: str, parser: argparse.ArgumentParser, command: str) -> str:
    """`message` with the library's argument names written as the command's flags, so that a user reads the flag
    they typed (`max_plan_bytes` -> `--max-plan-bytes`).

    Only names in backquotes or before `=` change, and only names that are flags of `command`.

    >>> in_flag_names("`max_plan_bytes` must be > 0. Received: max_plan_bytes=-1; `spec` too",
    ...               build_parser(), "keygen")
    '`--max-plan-bytes` must be > 0. Received: --max-plan-bytes=-1; `spec` too'
    """
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices.get(command)
    if sub is None:
        return message
    flags = {o[2:].replace("-", "_"): o for a in sub._actions for o in a.option_strings if o.startswith("--")}

    def flag(match):
        name = match.group(2)
        return match.group(1) + flags[name] + match.group(3) if name in flags else match.group(0)

    return re.sub(r"(`|\b)([a-z][a-z0-9_]*)(`|=)", flag, message)
