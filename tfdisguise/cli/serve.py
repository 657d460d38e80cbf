"""`tfdisguise serve`: serve saved_models over TF Serving's gRPC and REST APIs.

It takes `tensorflow_model_server`'s flags, so scripts and manifests move
between the two unchanged. When `tensorflow_model_server` is on PATH (and
--embedded is not given), the command hands over to it, with the flags below
that it knows (as `--name=value`) and any other flag as given. Otherwise the
embedded server serves, and flags it does not know are an error.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="tfdisguise")
>>> register_subparser(parser.add_subparsers(dest="command"))
>>> args, extra = parser.parse_known_args(["serve", "--port", "9000", "--host=127.0.0.1", "--enable_batching"])
>>> model_server_argv(args, extra)
['--port=9000', '--enable_batching']
"""

from __future__ import annotations

import os
import shutil
import sys

from tfdisguise.serving import DEFAULT_MAX_MESSAGE_BYTES

MODEL_SERVER = "tensorflow_model_server"

# Flags that tensorflow_model_server also has (same names, same defaults): handed over when it runs.
_MODEL_SERVER_FLAGS = (
    ("--port", int, "gRPC port (default 8500; 0 picks a free one in the embedded server)"),
    ("--rest_api_port", int, "REST port (default 0: no REST, as in TF Serving)"),
    ("--model_name", str, "the served model's name (default 'default')"),
    ("--model_base_path", str, "the model's directory of numbered versions"),
    ("--model_config_file", str, "a ModelServerConfig text proto (models.config), for several models"),
    ("--ssl_config_file", str, "an SSLConfig text proto: server_key, server_cert[, custom_ca, client_verify]"),
    ("--grpc_max_threads", int, "gRPC worker threads (default 16)"),
)


def register_subparser(subparsers) -> None:
    # Exact flag names only: tensorflow_model_server knows no abbreviations, and a prefix of one
    # of its flags must be handed over, not read as ours.
    p = subparsers.add_parser(
        "serve", allow_abbrev=False, description=__doc__.split("\n\n>>>")[0],
        help="serve saved_models over TF Serving's gRPC/REST APIs (tensorflow_model_server's flags)")
    server_flags = p.add_argument_group("tensorflow_model_server flags")
    for flag, kind, text in _MODEL_SERVER_FLAGS:
        # None when not given, so that only the flags a user gave are handed over.
        server_flags.add_argument(flag, type=kind, default=None, help=text)
    embedded = p.add_argument_group("embedded server only")
    embedded.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    embedded.add_argument("--max_message_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                          help="gRPC message size limit (default 64 MiB)")
    embedded.add_argument("--embedded", action="store_true",
                          help=f"use the embedded server even if {MODEL_SERVER} is on PATH")
    p.set_defaults(run=run, takes_unknown_flags=True, unknown_flags=())


def _given(args) -> dict:
    return {flag[2:]: getattr(args, flag[2:]) for flag, _, _ in _MODEL_SERVER_FLAGS
            if getattr(args, flag[2:]) is not None}


def model_server_argv(args, unknown_flags=()) -> list[str]:
    """The flags for `tensorflow_model_server`: the given ones it knows, as --name=value, then the others."""
    return [f"--{name}={value}" for name, value in _given(args).items()] + list(unknown_flags)


def run(args) -> int:
    binary = None if args.embedded else shutil.which(MODEL_SERVER)
    if binary:
        print(f"running {binary}", file=sys.stderr, flush=True)
        argv = [binary, *model_server_argv(args, args.unknown_flags)]
        os.execv(binary, argv)  # replaces this process: signals and the exit status are the real server's
    if args.unknown_flags:
        raise ValueError(f"the embedded server does not know {' '.join(args.unknown_flags)} (they are handed "
                         f"to {MODEL_SERVER} when it is on PATH)")
    from tfdisguise.serving.server import serve

    return serve(**_given(args), host=args.host, max_message_bytes=args.max_message_bytes)
