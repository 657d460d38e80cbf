# TF Serving with the exported disguised-image models baked in.
# The serving image must be at least as new as the TensorFlow that exported the
# models: tensorflow==2.21.0 is pinned in setup.cfg, so is the image.
FROM tensorflow/serving:2.21.0

COPY saved_models/ /models/
COPY serving/models.config serving/batching_parameters.txt serving/monitoring.config /config/

# Exposure: TF Serving binds every interface and its APIs have no authentication. Publish the ports on
# loopback (docker run -p 127.0.0.1:8500:8500 -p 127.0.0.1:8501:8501) or serve TLS (--ssl_config_file).
# `tfdisguise serve` takes these same flags; the embedded server batches and serves metrics from the same files.
# One intra-op thread per TensorFlow op: concurrent small requests on CPU then spend less time spinning, and the
# batching file's one-batch-thread-per-core was tuned with it (docs/RESULTS.md, section 3; measured on the
# embedded server, not on this image).
EXPOSE 8500 8501
ENTRYPOINT ["tensorflow_model_server"]
CMD ["--port=8500", "--rest_api_port=8501", \
     "--model_config_file=/config/models.config", \
     "--enable_batching", "--batching_parameters_file=/config/batching_parameters.txt", \
     "--monitoring_config_file=/config/monitoring.config", \
     "--tensorflow_intra_op_parallelism=1"]
