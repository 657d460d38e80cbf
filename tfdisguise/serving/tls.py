"""TLS for the embedded server, configured as TF Serving's --ssl_config_file, and for the owner's client.

gRPC and REST serve with the same certificates and the same client
verification: `SSLConfig.credentials()` for gRPC, `SSLConfig.ssl_context()` for
REST. `ClientTLS` is the client's side, for both transports.

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
import os
import re
import ssl
import tempfile

__all__ = ["ClientTLS", "SSLConfig", "parse_ssl_config", "read_ssl_config"]


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

    def ssl_context(self, source: str = "the SSL config") -> ssl.SSLContext:
        """The REST server's `ssl.SSLContext`: the same certificate and client verification as `credentials()`.

        Raises ValueError, saying why, when the config cannot be served over
        HTTPS: REST must then not start, rather than serve plain HTTP.
        """
        if self.client_verify and not self.custom_ca:
            raise ValueError(f"{source}: client_verify needs custom_ca, the CA that signs the client certificates.")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            # The ssl module loads a certificate chain only from files: they live for this call, readable by us alone.
            with tempfile.TemporaryDirectory(prefix="tfdisguise-tls-") as folder:
                paths = {}
                for name in ("server_cert", "server_key"):
                    paths[name] = os.path.join(folder, name)
                    with open(os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                        f.write(getattr(self, name))
                context.load_cert_chain(paths["server_cert"], paths["server_key"])
            if self.client_verify:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(cadata=self.custom_ca.decode("ascii"))
        except (ssl.SSLError, ValueError) as e:
            raise ValueError(f"{source}: cannot serve REST over HTTPS with this server_key, server_cert and "
                             f"custom_ca ({e}); refusing to serve it over plain HTTP.") from None
        return context


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


def _read(path: str | None, name: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"`{name}` cannot be read: {e.strerror}. Received: {name}={path!r}") from None


@dataclasses.dataclass(frozen=True)
class ClientTLS:
    """The client's TLS settings (PEM file paths), for gRPC and REST alike.

    Args:
        ca_cert: the CA that signs the server's certificate; None trusts the system's CAs.
        client_cert: the client's certificate, for a server that verifies clients (client_verify).
        client_key: the client certificate's private key.

    >>> ClientTLS(client_cert="client.crt")
    Traceback (most recent call last):
    ...
    ValueError: `client_cert` and `client_key` go together. Received: client_cert='client.crt', client_key=None
    """

    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def __post_init__(self):
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError(f"`client_cert` and `client_key` go together. Received: "
                             f"client_cert={self.client_cert!r}, client_key={self.client_key!r}")

    def grpc_credentials(self):
        """`grpc.ChannelCredentials` for a gRPC channel."""
        import grpc

        return grpc.ssl_channel_credentials(root_certificates=_read(self.ca_cert, "ca_cert"),
                                            private_key=_read(self.client_key, "client_key"),
                                            certificate_chain=_read(self.client_cert, "client_cert"))

    def ssl_context(self) -> ssl.SSLContext:
        """An `ssl.SSLContext` for HTTPS, which checks the server's certificate and host name."""
        try:
            context = ssl.create_default_context(cafile=self.ca_cert)
            if self.client_cert:
                context.load_cert_chain(self.client_cert, self.client_key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"Cannot use the TLS files ca_cert={self.ca_cert!r}, client_cert={self.client_cert!r}, "
                             f"client_key={self.client_key!r}: {e}") from None
        return context
