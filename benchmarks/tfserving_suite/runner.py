"""Runs TF Serving's tensorflow_model_server_test.py as upstream does (tf.test.main), from run.sh's tree.

The suite imports `tensorflow_serving.apis` (the tensorflow-serving-api package) and its own
`tensorflow_serving.model_servers.test_util`, which lives only in the checkout: the package's search path is
extended with the checkout's copy. LEGACY_KERAS=1 makes this process (not the server) use tf-keras.
"""

import os
import runpy
import sys

if os.environ.get("LEGACY_KERAS") == "1":
    os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow_serving

root = os.environ["SUITE_ROOT"]
tensorflow_serving.__path__.append(root)
test = os.path.join(root, "model_servers", "tensorflow_model_server_test.py")
sys.argv = [test, *sys.argv[1:]]
runpy.run_path(test, run_name="__main__")
