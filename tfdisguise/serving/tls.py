"""TLS for the embedded server, configured as TF Serving's --ssl_config_file.

The file is an `SSLConfig` text proto. The pip package of TF Serving does not
ship that message, and the PEM blocks inside it usually span several lines,
which protobuf's text parser rejects; so the four fields are read directly.

>>> config = parse_ssl_config('server_key: "KEY"\\nserver_cert: "CERT"\\nclient_verify: true\\n')
>>> config.server_key, config.server_cert, config.custom_ca, config.client_verify
(b'KEY', b'CERT', None, True)
>>> parse_ssl_config('server_cert: "CERT"', source="ssl.config")
Traceback (most recent call last):
...
ValueError: ssl.config: an SSL config needs server_key and server_cert. Received the fields: server_cert
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["SSLConfig", "parse_ssl_config", "read_ssl_config"]


@dataclasses.dataclass(frozen=True)
class SSLConfig:
    """The server's private key and certificate chain (PEM), the CA of client certificates, and whether to ask."""

    server_key: bytes
    server_cert: bytes
    custom_ca: bytes | None = None
    client_verify: bool = False

    def credentials(self):
        """The `grpc.ServerCredentials` for this config."""
        import grpc

        return grpc.ssl_server_credentials([(self.server_key, self.server_cert)], root_certificates=self.custom_ca,
                                           require_client_auth=self.client_verify)


_STRING_FIELD = r'\b{}\s*:\s*(["\'])((?:(?!\1)[^\\]|\\.)*)\1'


def parse_ssl_config(text: str, source: str = "<ssl config>") -> SSLConfig:
    """Reads an `SSLConfig` text proto; `source` names it in errors."""
    fields = {}
    for name in ("server_key", "server_cert", "custom_ca"):
        match = re.search(_STRING_FIELD.format(name), text, re.S)
        if match:
            # Text-proto escapes (\n, \", \\) as Python reads them.
            fields[name] = match.group(2).encode().decode("unicode_escape").encode()
    if "server_key" not in fields or "server_cert" not in fields:
        raise ValueError(f"{source}: an SSL config needs server_key and server_cert. "
                         f"Received the fields: {', '.join(fields) or 'none'}")
    return SSLConfig(**fields, client_verify=bool(re.search(r"\bclient_verify\s*:\s*true\b", text)))


def read_ssl_config(path: str) -> SSLConfig:
    """Reads TF Serving's --ssl_config_file."""
    with open(path) as f:
        return parse_ssl_config(f.read(), source=path)
