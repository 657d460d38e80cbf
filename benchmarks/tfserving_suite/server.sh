#!/usr/bin/env bash
# The suite's `tensorflow_model_server`: tfdisguise's embedded server, given TF Serving's flags unchanged.
# TFS_EXTRA_FLAGS (run.sh) appends flags; the test process's Keras choice must not reach the server.
unset TF_USE_LEGACY_KERAS
exec "${TFDISGUISE_SERVER:-tfdisguise}" serve --embedded "$@" ${TFS_EXTRA_FLAGS:-}
