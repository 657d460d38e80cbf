"""TF Serving's APIs: an embedded server, and the owner's client that disguises before it queries.

registry    loads `<base_path>/<version>/` SavedModels and runs their signatures; polls versions, reloads config
batching    merges concurrent requests per model version and signature (--enable_batching)
metrics     Prometheus metrics under TF Serving's names (--monitoring_config_file)
limits      what one request may hold, checked before anything is allocated
grpc_api    PredictionService and ModelService over a registry; deadlines, batching and counting of a request
grpc_server the gRPC server (grpc.aio): a read deadline for each call's request, a cap on open calls
rest_api    the REST API over a registry, as a WSGI app (werkzeug)
rest_server the HTTP server that hosts it (tornado): TLS, read deadlines, body and connection caps
tls         --ssl_config_file for both APIs; the client's TLS
server      the embedded server's lifecycle: start, stop, SIGTERM
transports  gRPC and REST behind one small interface, for the client
client      `DisguisedClient`

This package's modules load grpc and tensorflow_serving; `import tfdisguise`
loads none of them until serving is used.
"""

# Defaults that the CLI shows too: here, where importing them loads no TensorFlow.
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20  # TF Serving's clients and servers agree on the gRPC message limit
# A REST body is JSON: about 10 to 20 characters per float32, and several times that once parsed.
DEFAULT_REST_MAX_BODY_BYTES = 16 << 20
# Seconds a client has to send a request's headers, and again its body (slow senders are cut off).
DEFAULT_REST_READ_TIMEOUT = 10.0
# Open REST connections at once; more are answered 503 and closed.
DEFAULT_REST_MAX_CONNECTIONS = 128
# Open REST connections from one source address: one client cannot hold every slot.
DEFAULT_REST_MAX_CONNECTIONS_PER_CLIENT = 32
# Seconds a REST client has to finish its TLS handshake.
DEFAULT_REST_TLS_HANDSHAKE_TIMEOUT = 5.0
# Decoded input bytes of all the requests being served at once (gRPC and REST together); past it, a request is
# answered RESOURCE_EXHAUSTED (REST 429). Why: each request within its own cap still costs several times its
# decoded size while it runs, so only a sum over the requests in flight bounds the server's memory.
DEFAULT_MAX_INFLIGHT_BYTES = 256 << 20
# Seconds a gRPC call has to send its request message (64 MiB on a slow link); a waiting call holds no thread.
DEFAULT_GRPC_READ_TIMEOUT = 30.0
# gRPC calls open at once; more are answered RESOURCE_EXHAUSTED.
DEFAULT_GRPC_MAX_CONCURRENT_RPCS = 1024
