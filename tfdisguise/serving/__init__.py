"""TF Serving's APIs: an embedded server, and the owner's client that disguises before it queries.

registry   loads `<base_path>/<version>/` SavedModels and runs their signatures
grpc_api   PredictionService and ModelService over a registry
rest_api   the REST API over a registry (werkzeug)
tls        --ssl_config_file
server     the embedded server's lifecycle: start, stop, SIGTERM
transports gRPC and REST behind one small interface, for the client
client     `DisguisedClient`

This package's modules load grpc and tensorflow_serving; `import tfdisguise`
loads none of them until serving is used.
"""

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20  # TF Serving's clients and servers agree on the gRPC message limit
