"""tfdisguise: privacy-preserving deep learning on disguised images.

The owner disguises images with a secret key (keyed block permutation plus
randomized multidimensional transforms and noise) before they leave; the cloud
trains and serves ordinary Keras models on the disguised images.

>>> import tfdisguise
>>> key = tfdisguise.Key.generate(image_shape=(28, 28, 1))  # the recommended setting for the shape
>>> key.spec.describe()
'block 7x7: block_scramble(per-position) > permute > noise(100)'
>>> tfdisguise.Key.generate(image_shape=(28, 28, 1), rmt="orthogonal").spec.describe()  # the paper's
'block 7x7: rmt(orthogonal,matrix) > permute > noise(100)'

The public names load on first use: `import tfdisguise` stays light (the
`tfdisguise` command answers `--help` without starting TensorFlow), and grpc
and tensorflow_serving load only when serving is used.
"""

import importlib as _importlib
import sys as _sys
import types as _types

__version__ = "0.1.0"

# Public name -> the module that defines it; a module maps to itself (its own name, None here).
_EXPORTS = {
    "Disguise": "tfdisguise.layer",
    "DisguisedClient": "tfdisguise.serving.client",
    "ExportError": "tfdisguise.export",
    "Key": "tfdisguise.key",
    "KeyFileError": "tfdisguise.key",
    "KeyMismatchError": "tfdisguise.key",
    "Noise": "tfdisguise.spec",
    "Permute": "tfdisguise.spec",
    "RMT": "tfdisguise.spec",
    "ShardError": "tfdisguise.shards",
    "Spec": "tfdisguise.spec",
    "datasets": None,
    "disguise": "tfdisguise.mechanisms",
    "export": "tfdisguise.export",
    "export_disguised": "tfdisguise.shards",
    "load_disguised": "tfdisguise.shards",
    "models": None,
    "privacy": None,
    "read_manifest": "tfdisguise.shards",
    "undisguise": "tfdisguise.mechanisms",
    "wrap": "tfdisguise.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tfdisguise' has no attribute {name!r}")
    module = _EXPORTS[name]
    value = _importlib.import_module(f"tfdisguise.{name}") if module is None else getattr(
        _importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(_types.ModuleType):
    def __setattr__(self, name, value):
        # Loading the submodule `tfdisguise.export` binds the package's `export` to the module; the public
        # `tfdisguise.export` is the function, so that binding is skipped and `__getattr__` answers instead.
        if isinstance(value, _types.ModuleType) and value.__name__ == _EXPORTS.get(name) == f"tfdisguise.{name}":
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
