"""tfdisguise: privacy-preserving deep learning on disguised images.

The owner disguises images with a secret key (keyed block permutation plus
randomized multidimensional transforms and noise) before they leave; the cloud
trains and serves ordinary Keras models on the disguised images.

>>> import tfdisguise
>>> key = tfdisguise.Key.generate(image_shape=(28, 28, 1), block_size=7, noise=100)
>>> key.spec.describe()
'block 7x7: rmt(orthogonal,matrix) > permute > noise(100)'
"""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfdisguise import datasets
from tfdisguise import models
from tfdisguise import privacy
from tfdisguise.data import wrap
from tfdisguise.export import ExportError
from tfdisguise.export import export
from tfdisguise.key import Key
from tfdisguise.key import KeyFileError
from tfdisguise.key import KeyMismatchError
from tfdisguise.layer import Disguise
from tfdisguise.mechanisms import disguise
from tfdisguise.mechanisms import undisguise
from tfdisguise.serving.client import DisguisedClient
from tfdisguise.shards import ShardError
from tfdisguise.shards import export_disguised
from tfdisguise.shards import load_disguised
from tfdisguise.shards import read_manifest
from tfdisguise.spec import Noise
from tfdisguise.spec import Permute
from tfdisguise.spec import RMT
from tfdisguise.spec import Spec

__version__ = "0.1.0"

__all__ = [
    "Disguise",
    "DisguisedClient",
    "ExportError",
    "Key",
    "KeyFileError",
    "KeyMismatchError",
    "Noise",
    "Permute",
    "RMT",
    "ShardError",
    "Spec",
    "datasets",
    "disguise",
    "export",
    "export_disguised",
    "load_disguised",
    "models",
    "privacy",
    "read_manifest",
    "undisguise",
    "wrap",
]
