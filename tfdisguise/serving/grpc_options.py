"""TF Serving's --grpc_channel_arguments, read for the embedded gRPC server.

The flag is a comma-separated list of `name=value` gRPC core arguments, as
tensorflow_model_server reads it: a value of digits (optionally signed) is an
integer, anything else a string. Arguments that would undo the embedded
server's own limits are refused, naming the flag that sets them instead: the
message sizes (--max_message_bytes, which also caps what a request may decode
to) and SO_REUSEPORT (off, so that a second server cannot take a share of this
port's connections).

>>> parse_channel_arguments("grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb, grpc.so_reuseaddr=1")
[('grpc.max_connection_age_ms', 2000), ('grpc.lb_policy_name', 'grpclb'), ('grpc.so_reuseaddr', 1)]
>>> parse_channel_arguments("")
[]
>>> parse_channel_arguments("grpc.max_receive_message_length=1")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: --grpc_channel_arguments: grpc.max_receive_message_length is set by --max_message_bytes, which ...
"""

from __future__ import annotations

import re

__all__ = ["PROTECTED", "parse_channel_arguments"]

# Arguments the embedded server sets itself, and why they cannot be given here.
_SIZE = "set by --max_message_bytes, which also caps what a request may decode to,"
PROTECTED = {
    "grpc.max_receive_message_length": _SIZE,
    "grpc.max_send_message_length": _SIZE,
    "grpc.so_reuseport": "always 0, so that a second server cannot take a share of this port's connections,",
}


def parse_channel_arguments(text: str | None) -> list[tuple[str, int | str]]:
    """The gRPC server options that `text` (the flag's value) names, in order."""
    options = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise ValueError(f"--grpc_channel_arguments: expected comma-separated name=value pairs "
                             f"(e.g. grpc.max_connection_age_ms=2000); received {item!r}.")
        if name in PROTECTED:
            raise ValueError(f"--grpc_channel_arguments: {name} is {PROTECTED[name]} in the embedded server; "
                             f"received {item!r}.")
        options.append((name, int(value) if re.fullmatch(r"[+-]?\d+", value) else value))
    return options
