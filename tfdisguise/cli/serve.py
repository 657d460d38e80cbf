"""`tfdisguise serve`: serve saved_models over TF Serving's gRPC and REST APIs.

It takes `tensorflow_model_server`'s flags, so scripts, manifests and our
Dockerfile move between the two unchanged. When `tensorflow_model_server` is on
PATH (and --embedded is not given), the command hands over to it, with the flags
below that it knows (as `--name=value`) and any other flag as given. Otherwise
the embedded server serves, and flags it does not know are an error.

Exposure: both servers bind every interface (0.0.0.0) by default, and TF
Serving's APIs have no authentication. The embedded server binds --host (both
gRPC and REST); `tensorflow_model_server` has no such flag, so an address other
than every interface is refused rather than silently ignored: publish its ports
on loopback instead (docker run -p 127.0.0.1:8500:8500). --ssl_config_file
serves gRPC and REST over TLS, with client certificates if it says so;
`tensorflow_model_server` has no TLS on REST, so REST with --ssl_config_file is
refused rather than handed over. Administration: the embedded server refuses
ModelService/HandleReloadConfigRequest (PERMISSION_DENIED) unless
--allow_config_reload_rpc is given, since any client that reaches the gRPC port
could otherwise unload every model or serve any directory of this machine;
`tensorflow_model_server` always answers it.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="tfdisguise")
>>> register_subparser(parser.add_subparsers(dest="command"))
>>> args, extra = parser.parse_known_args(["serve", "--port", "9000", "--enable_batching", "--num_load_threads=2"])
>>> model_server_argv(args, extra)
['--port=9000', '--enable_batching=true', '--num_load_threads=2']
>>> model_server_argv(parser.parse_args(["serve", "--host", "127.0.0.1"]))
Traceback (most recent call last):
...
ValueError: tensorflow_model_server always binds every interface (0.0.0.0) and has no flag to bind 127.0.0.1; ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from tfdisguise.serving import (
    DEFAULT_GRPC_MAX_CONCURRENT_RPCS,
    DEFAULT_GRPC_READ_TIMEOUT,
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_REST_MAX_BODY_BYTES,
    DEFAULT_REST_MAX_CONNECTIONS,
    DEFAULT_REST_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_REST_READ_TIMEOUT,
    DEFAULT_REST_TLS_HANDSHAKE_TIMEOUT,
)

MODEL_SERVER = "tensorflow_model_server"
_EVERY_INTERFACE = ("0.0.0.0", "::", "[::]")


def _bool(text: str) -> str:
    """TF Serving's spelling of a boolean flag's value."""
    value = text.lower()
    if value not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return "true" if value in ("true", "1") else "false"


def _port(text: str) -> int:
    """A TCP port: out of range, the OS would take it modulo 65536 (70000 binds 4464; -1 binds 65535)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {value}")
    return value


def _positive(text: str) -> int:
    """A limit: 0 or less would remove it (gRPC reads -1 as no message limit) rather than mean anything."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


# Flags that tensorflow_model_server also has (same names, same defaults): handed over when it runs.
# (flag, argparse keywords, help)
_MODEL_SERVER_FLAGS = (
    ("--port", {"type": _port}, "gRPC port (default 8500; 0 picks a free one in the embedded server)"),
    ("--rest_api_port", {"type": _port}, "REST port (default 0: no REST, as in TF Serving)"),
    ("--model_name", {"type": str}, "the served model's name (default 'default')"),
    ("--model_base_path", {"type": str},
     "the model's directory of numbered versions (default: none; this or --model_config_file)"),
    ("--model_config_file", {"type": str},
     "a ModelServerConfig text proto (models.config), for several models (default: none)"),
    ("--ssl_config_file", {"type": str},
     "an SSLConfig text proto: server_key, server_cert[, custom_ca, client_verify]; TLS for gRPC and REST alike "
     "(default: none, plain text)"),
    ("--grpc_max_threads", {"type": _positive}, "gRPC worker threads (default 16)"),
    ("--enable_batching", {"type": _bool, "nargs": "?", "const": "true"},
     "server-side batching: concurrent requests to one model and signature run as one batch (default: false)"),
    ("--batching_parameters_file", {"type": str},
     "a BatchingParameters text proto: max_batch_size, batch_timeout_micros, max_enqueued_batches, "
     "num_batch_threads, allowed_batch_sizes (default: none, TF Serving's defaults)"),
    ("--monitoring_config_file", {"type": str},
     "a MonitoringConfig text proto: prometheus_config { enable: true, path: ... } serves metrics on the REST port "
     "(default: none, no metrics)"),
    ("--file_system_poll_wait_seconds", {"type": int},
     "seconds between polls for new and removed versions (default 1; 0 loads once)"),
    ("--model_config_file_poll_wait_seconds", {"type": int},
     "seconds between re-reads of --model_config_file (default 0: read once)"),
    ("--rest_api_num_threads", {"type": int}, "threads that run REST requests (default: --grpc_max_threads)"),
    ("--rest_api_timeout_in_ms", {"type": int}, "deadline of each REST predict, in milliseconds (default: none)"),
    ("--tensorflow_intra_op_parallelism", {"type": int},
     "threads one TensorFlow op may use (default 0: TensorFlow picks, one per core); 1 serves concurrent small "
     "requests on CPU with less spinning (docs/RESULTS.md, section 3)"),
    ("--tensorflow_inter_op_parallelism", {"type": int},
     "ops TensorFlow runs at once (default 0: TensorFlow picks)"),
    ("--grpc_socket_path", {"type": str},
     "also serve gRPC on this Unix domain socket, e.g. /tmp/tf-serving.sock (default: none)"),
    ("--grpc_channel_arguments", {"type": str},
     "gRPC server arguments, comma-separated name=value (e.g. grpc.max_connection_age_ms=2000); the embedded "
     "server refuses the message sizes (--max_message_bytes sets them) and grpc.so_reuseport (default: none)"),
    ("--prefer_tflite_model", {"type": _bool, "nargs": "?", "const": "true"},
     "serve a version's model.tflite instead of its saved_model.pb when it has one (default: false)"),
)
# Must exist, here as for the real server (checked before anything starts: a missing one was a traceback).
_FILES = ("model_config_file", "ssl_config_file", "batching_parameters_file", "monitoring_config_file")


def register_subparser(subparsers) -> None:
    # Exact flag names only: tensorflow_model_server knows no abbreviations, and a prefix of one
    # of its flags must be handed over, not read as ours.
    p = subparsers.add_parser(
        "serve", allow_abbrev=False, description=__doc__.split("\n\n>>>")[0],
        help="serve saved_models over TF Serving's gRPC/REST APIs (tensorflow_model_server's flags)")
    server_flags = p.add_argument_group("tensorflow_model_server flags")
    for flag, kwargs, text in _MODEL_SERVER_FLAGS:
        # None when not given, so that only the flags a user gave are handed over.
        server_flags.add_argument(flag, default=None, help=text, **kwargs)
    embedded = p.add_argument_group("embedded server only")
    embedded.add_argument("--host", default=None,
                          help="address that gRPC and REST bind (default 0.0.0.0: every interface; 127.0.0.1 for "
                               "this machine only)")
    embedded.add_argument("--max_message_bytes", type=_positive, default=DEFAULT_MAX_MESSAGE_BYTES,
                          help="gRPC message limit, and the most a request's inputs may decode to (default 64 MiB)")
    embedded.add_argument("--rest_max_body_bytes", type=_positive, default=DEFAULT_REST_MAX_BODY_BYTES,
                          help=f"largest REST body; larger ones get 413 (default {DEFAULT_REST_MAX_BODY_BYTES >> 20} "
                               f"MiB)")
    embedded.add_argument("--rest_read_timeout", type=float, default=DEFAULT_REST_READ_TIMEOUT,
                          help=f"seconds a REST client has to send its headers, and again its body "
                               f"(default {DEFAULT_REST_READ_TIMEOUT:g})")
    embedded.add_argument("--rest_max_connections", type=_positive, default=DEFAULT_REST_MAX_CONNECTIONS,
                          help=f"open REST connections at most; more get 503 (default {DEFAULT_REST_MAX_CONNECTIONS})")
    embedded.add_argument("--rest_max_connections_per_client", type=_positive,
                          default=DEFAULT_REST_MAX_CONNECTIONS_PER_CLIENT,
                          help=f"open REST connections from one source address at most; more get 503 (default "
                               f"{DEFAULT_REST_MAX_CONNECTIONS_PER_CLIENT})")
    embedded.add_argument("--rest_tls_handshake_timeout", type=_positive_float,
                          default=DEFAULT_REST_TLS_HANDSHAKE_TIMEOUT,
                          help=f"seconds a REST client has to finish its TLS handshake (with --ssl_config_file; "
                               f"default {DEFAULT_REST_TLS_HANDSHAKE_TIMEOUT:g})")
    embedded.add_argument("--grpc_read_timeout", type=_positive_float, default=DEFAULT_GRPC_READ_TIMEOUT,
                          help=f"seconds a gRPC call has to send its request message; later it gets "
                               f"DEADLINE_EXCEEDED (default {DEFAULT_GRPC_READ_TIMEOUT:g}). A waiting call holds no "
                               f"worker thread")
    embedded.add_argument("--grpc_max_concurrent_rpcs", type=_positive, default=DEFAULT_GRPC_MAX_CONCURRENT_RPCS,
                          help=f"gRPC calls open at once; more get RESOURCE_EXHAUSTED "
                               f"(default {DEFAULT_GRPC_MAX_CONCURRENT_RPCS})")
    embedded.add_argument("--max_inflight_bytes", type=_positive, default=DEFAULT_MAX_INFLIGHT_BYTES,
                          help=f"decoded input bytes of all requests in flight together, gRPC and REST; past it a "
                               f"request gets RESOURCE_EXHAUSTED (REST 429) (default "
                               f"{DEFAULT_MAX_INFLIGHT_BYTES >> 20} MiB)")
    embedded.add_argument("--allow_config_reload_rpc", type=_bool, nargs="?", const="true", default="false",
                          help="answer ModelService/HandleReloadConfigRequest (default false: refused with "
                               "PERMISSION_DENIED, since any client could unload every model or serve any directory "
                               "of this machine; tensorflow_model_server always answers it)")
    embedded.add_argument("--embedded", action="store_true",
                          help=f"use the embedded server even if {MODEL_SERVER} is on PATH")
    p.set_defaults(run=run, takes_unknown_flags=True, unknown_flags=())


def _given(args) -> dict:
    return {flag[2:]: getattr(args, flag[2:]) for flag, _, _ in _MODEL_SERVER_FLAGS
            if getattr(args, flag[2:]) is not None}


def model_server_argv(args, unknown_flags=()) -> list[str]:
    """The flags for `tensorflow_model_server`: the given ones it knows, as --name=value, then the others.

    Raises ValueError where the real server would expose more than asked: a
    --host other than every interface (it has no such flag, and binds every
    interface), or REST with --ssl_config_file (its REST has no TLS).
    """
    if args.host is not None and args.host not in _EVERY_INTERFACE:
        raise ValueError(f"{MODEL_SERVER} always binds every interface (0.0.0.0) and has no flag to bind "
                         f"{args.host}; refusing to expose it more widely than asked. Use --embedded to bind "
                         f"{args.host}, or publish the container's ports on that address "
                         f"(docker run -p {args.host}:8500:8500).")
    if args.ssl_config_file and args.rest_api_port:
        raise ValueError(f"{MODEL_SERVER} serves REST in plain HTTP even with --ssl_config_file, which secures gRPC "
                         f"only; refusing to expose REST without the TLS that gRPC has. Drop --rest_api_port, or use "
                         f"--embedded (HTTPS on REST with the same certificates).")
    return [f"--{name}={value}" for name, value in _given(args).items()] + list(unknown_flags)


def embedded_options(args) -> tuple[dict, list[str]]:
    """The embedded server's `serve()` arguments, and notes on flags it reads but does not act on (none now).

    The files that flags name must exist, as they must for the real server, so
    that a command line that fails there fails here too.
    """
    given = _given(args)
    notes = []
    for name in _FILES:
        value = given.get(name)
        if value is not None and not os.path.isfile(value):
            problem = "is not a regular file" if os.path.exists(value) else "does not exist"
            raise ValueError(f"--{name}: {value} {problem}; pass the path of an existing text proto file.")
    from tfdisguise.serving.grpc_options import parse_channel_arguments

    parse_channel_arguments(given.get("grpc_channel_arguments"))  # refused before any model loads
    if given.get("batching_parameters_file") and given.get("enable_batching") != "true":
        notes.append("--batching_parameters_file is read only with --enable_batching, as in TF Serving.")
    options = dict(given, host=args.host or "0.0.0.0", max_message_bytes=args.max_message_bytes,
                   rest_max_body_bytes=args.rest_max_body_bytes, rest_read_timeout=args.rest_read_timeout,
                   rest_max_connections=args.rest_max_connections,
                   allow_config_reload_rpc=args.allow_config_reload_rpc == "true",
                   max_inflight_bytes=args.max_inflight_bytes, grpc_read_timeout=args.grpc_read_timeout,
                   grpc_max_concurrent_rpcs=args.grpc_max_concurrent_rpcs,
                   rest_max_connections_per_client=args.rest_max_connections_per_client,
                   rest_tls_handshake_timeout=args.rest_tls_handshake_timeout)
    return options, notes


def run(args) -> int:
    binary = None if args.embedded else shutil.which(MODEL_SERVER)
    if binary:
        argv = [binary, *model_server_argv(args, args.unknown_flags)]
        print(f"running {binary}", file=sys.stderr, flush=True)
        os.execv(binary, argv)  # replaces this process: signals and the exit status are the real server's
    if args.unknown_flags:
        raise ValueError(f"the embedded server does not know {' '.join(args.unknown_flags)} (they are handed "
                         f"to {MODEL_SERVER} when it is on PATH)")
    options, notes = embedded_options(args)
    for note in notes:
        print(f"note: {note}", file=sys.stderr, flush=True)
    from tfdisguise.serving.server import serve

    return serve(**options)
