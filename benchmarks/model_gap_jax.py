"""The GPU run on Keras's JAX backend: plain against disguised CIFAR-10 training to convergence, and the
`Disguise` layer's throughput. Needs no TensorFlow (the device machines have JAX only).

Training (`--parts`): for each part of `model_gap.py` (`plain` is the baseline), one process trains
`--recipe` of `model_gap.py` (default `resnet20+aug`: owner-side crop + flip before the disguise,
label smoothing 0.1, Adam with a warm-up and a cosine decay; `tfdisguise.recipe`) for `--epochs`. The owner's
side runs on the GPU inside the training graph: plain images -> augmentation -> `Disguise` (fresh noise at every
step) -> the classifier. That is what `wrap(ds, key, augment=...)` feeds a cloud trainer, computed where the
images are; the classifier's weights never see a plain image. Validation images are disguised with fresh noise
at every evaluation, as the owner's client disguises queries. Up to `--parallel` trainings share the GPU (small
models leave most of it idle). Each epoch appends a line to `<out>/train.jsonl`, so a run cut short still
reports its curve. `--data-parallel` trains under `keras.distribution.DataParallel` over every local device.

Attack inverse (`--inverse-stem`): each disguised part's classifier gets the key-free `spectral` attack's LMMSE
inverse as a fixed first layer, as benchmarks/inverse_stem.py does on the CPU. The cloud fits it on its uploads
(the training images disguised once) and public images of the same kind: the last `--public-limit` images of the
training split, which no part then trains on (plain included, so that it stays the reference). Its rows are
named `<part>+inverse`.

Layer speed (`--layer-speed`): the `Disguise` layer, jitted through `stateless_call`, on inputs already on the
device, at CIFAR size (the poster setting and the recommended default) and at 224x224x3 (block 16, matrix and
vector RMT): median images/s over rounds, written to `<out>/layer_speed.json`.

Split: `--data` is an .npz with x/y; `tfdisguise.datasets.load(..., validation_fraction=0.2, seed=0)`, the
split `model_gap.py` uses (CIFAR-10 train.npz: 40,000 / 10,000).

Usage (the device run in docs/RESULTS.md section 6):
  KERAS_BACKEND=jax python benchmarks/model_gap_jax.py --data cifar10.npz --parts plain,cifar-poster,cifar-perm \
      --epochs 100 --batch-size 512 --learning-rate 2e-3 --parallel 3 --out OUT [--layer-speed] [--inverse-stem]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
from model_gap import INVERTIBLE_PARTS, PARTS, RECIPES, mean_sd  # one definition of the settings, recipes, stats

LAYER_SETTINGS = {
    "cifar-poster 32x32x3 b2 orthogonal matrix, noise 25": ((32, 32, 3), PARTS["cifar-poster"]["spec"]),
    "cifar recommended 32x32x3 (scramble per position + perm + noise 25)": ((32, 32, 3), None),
    "224x224x3 b16 orthogonal matrix + perm, noise 25": (
        (224, 224, 3), {"block_size": 16, "rmt": "orthogonal", "rmt_mode": "matrix", "permute": True, "noise": 25}),
    "224x224x3 b16 orthogonal vector + perm, noise 25": (
        (224, 224, 3), {"block_size": 16, "rmt": "orthogonal", "rmt_mode": "vector", "permute": True, "noise": 25}),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help=".npz with x (uint8 NHWC) and y")
    p.add_argument("--parts", default="plain,cifar-poster,cifar-perm", help="comma list: plain and model_gap parts")
    p.add_argument("--recipe", default="resnet20+aug", choices=sorted(RECIPES["cifar10"]),
                   help="a CIFAR-10 recipe of model_gap.py")
    p.add_argument("--model", default=None, help="replace the recipe's model (and drop its model_options)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--parallel", type=int, default=1, help="trainings at once on the device")
    p.add_argument("--data-parallel", action="store_true", help="keras.distribution.DataParallel over all devices")
    p.add_argument("--max-seconds", type=float, default=None, help="stop each training after this wall time")
    p.add_argument("--inverse-stem", action="store_true",
                   help="disguised parts: the spectral attack's inverse as a fixed first layer")
    p.add_argument("--public-limit", type=int, default=5000,
                   help="--inverse-stem: the attacker's public images, the last N of the training split")
    p.add_argument("--layer-speed", action="store_true", help="also time the Disguise layer")
    p.add_argument("--layer-batch", type=int, default=16384, help="CIFAR-size batch for --layer-speed")
    p.add_argument("--out", default="benchmarks/out/model_gap_jax")
    p.add_argument("--summarize", action="store_true",
                   help="train nothing: write summary.md and curves.png from --out's results.jsonl and train.jsonl")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one training, in a child process
    return p.parse_args(argv)


def _spec(shape, fields):
    from tfdisguise import Spec

    return Spec.recommended(shape) if fields is None else Spec.create(shape, **fields)


def layer_speed(args) -> dict:
    """Median images/s of the jitted layer on device-resident inputs."""
    import jax
    import keras

    from tfdisguise import Disguise, Key

    results = {"devices": [str(d) for d in jax.devices()], "backend": keras.backend.backend(), "settings": {}}
    for name, (shape, fields) in LAYER_SETTINGS.items():
        layer = Disguise(Key.generate(_spec(shape, fields)))
        batch = args.layer_batch if shape[0] <= 32 else max(1, args.layer_batch // 64)
        x = jax.device_put(np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8))
        layer.build(x.shape)
        trainable = [v.value for v in layer.trainable_variables]
        state = [v.value for v in layer.non_trainable_variables]

        @jax.jit
        def step(state, x, layer=layer, trainable=trainable):
            out, state = layer.stateless_call(trainable, state, x)
            return out, state

        out, state = step(state, x)
        out.block_until_ready()
        times = []
        for _ in range(7):
            started = time.perf_counter()
            for _ in range(5):
                out, state = step(state, x)
            out.block_until_ready()
            times.append((time.perf_counter() - started) / 5)
        median = statistics.median(times)
        results["settings"][name] = {"batch": batch, "median_seconds": median, "images_per_s": batch / median,
                                     "input_MB_per_s": batch * int(np.prod(shape)) / median / 1e6}
        print(f"layer {name}: batch {batch}, {batch / median:,.0f} images/s", flush=True)
    with open(os.path.join(args.out, "layer_speed.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def train_worker(args, part: str) -> dict:
    """One training: `part` is "plain" or a model_gap part; the disguise runs inside the graph."""
    import keras

    from tfdisguise import Disguise, Key, datasets, models
    from tfdisguise.recipe import TrainConfig, augmentation, compile_model

    if args.data_parallel:
        keras.distribution.set_distribution(keras.distribution.DataParallel())
    train = datasets.load(args.data, "train", validation_fraction=0.2, seed=0)
    val = datasets.load(args.data, "validation", validation_fraction=0.2, seed=0)
    train, public = owner_and_public(train, args.public_limit if args.inverse_stem else 0, args.limit)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         seed=args.seed, **recipe_fields(args.recipe, args.model, args.epochs))
    keras.utils.set_random_seed(config.seed)
    shape = train.image_shape
    key = None if part == "plain" else Key.generate(_spec(shape, PARTS[part]["spec"]))
    owner = [augmentation(config.augment)] + ([Disguise(key)] if key else [])
    adapt = train.x[:4096].astype("float32")
    name = row_name(part, args.recipe, args.model)
    stem, positions, errors = [], None, None
    if key is not None and public is not None:
        stem, adapt, positions = inverse_stem(train.x, public, key, args.seed)
        name = f"{name}+inverse"
        # CIFAR's statistics are nearly left-right symmetric, so the attack can find the mirror image of the truth
        # (0 positions right), which serves a classifier as well: the error against both says which it found.
        plain = train.x[:len(adapt)].astype("float32")
        errors = [float(np.mean((adapt - p) ** 2)) for p in (plain, plain[:, :, ::-1])]
        print(f"{name}: the attack placed {positions} of the blocks where the key puts them; reconstruction "
              f"MSE {errors[0]:.1f} (against the mirror image {errors[1]:.1f})", flush=True)
    elif key is not None:
        adapt = np.asarray(Disguise(key)(adapt))
    classifier = models.build(config.model, shape, 10, adapt_data=adapt,
                              spec=key.spec if key and not stem else None, **config.model_options)
    model = keras.Sequential([keras.Input(shape), *owner, *stem, classifier])
    steps = -(-len(train) // config.batch_size)
    compile_model(model, config, steps)
    one_hot = (lambda y: keras.utils.to_categorical(y, 10)) if config.label_smoothing else (lambda y: y)
    log = os.path.join(args.out, "train.jsonl")
    started = time.time()

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            line = {"part": name, "seed": args.seed, "train_images": len(train), "epoch": epoch + 1,
                    "of": config.epochs, "seconds": round(time.time() - started, 1),
                    **{k: float(v) for k, v in (logs or {}).items()}}
            with open(log, "a") as f:
                f.write(json.dumps(line) + "\n")
            if args.max_seconds and time.time() - started > args.max_seconds:
                self.model.stop_training = True

    print(f"{name}: backend {keras.backend.backend()}, devices {keras.distribution.list_devices()}, "
          f"jit_compile {model.jit_compile}", flush=True)
    history = model.fit(train.x.astype("float32"), one_hot(train.y), batch_size=config.batch_size,
                        epochs=config.epochs, validation_data=(val.x.astype("float32"), one_hot(val.y)),
                        callbacks=[Record()], verbose=2)
    accuracy = history.history["val_accuracy"]
    result = {"part": name, "spec": key.spec.describe() if key else "plain", "seed": args.seed,
              "model": config.model, "epochs_run": len(accuracy), "epochs": config.epochs,
              "batch_size": config.batch_size, "learning_rate": config.learning_rate,
              "train_images": len(train), "val_images": len(val), "public_images": 0 if public is None else len(public),
              "positions_correct": positions, "reconstruction_mse": errors and errors[0],
              "reconstruction_mse_mirror": errors and errors[1], "final_val_accuracy": accuracy[-1],
              "best_val_accuracy": max(accuracy), "seconds": round(time.time() - started, 1),
              "data_parallel_devices": len(keras.distribution.list_devices()) if args.data_parallel else 1}
    with open(os.path.join(args.out, "results.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)
    return result


def recipe_fields(recipe: str, model: str | None, epochs: int) -> dict:
    """TrainConfig fields of a CIFAR-10 recipe of model_gap.py, with `model` replacing its model if given.

    >>> fields = recipe_fields("adapter+aug", None, 100)
    >>> fields["model"], fields["model_options"]["backbone"], fields["warmup_epochs"], fields["augment"]
    ('block_adapter', 'resnet20', 2, 'crop=0.125,flip')
    >>> recipe_fields("adapter+aug", "simple_cnn", 2)["model_options"]
    {}
    >>> recipe_fields("vit+aug", None, 100)["warmup_epochs"]
    1
    """
    # Another model does not take the recipe's model options (a backbone, a block size): they go with it.
    override = {"model": model, "model_options": {}} if model else {}
    return {"warmup_epochs": min(2, epochs - 1), **RECIPES["cifar10"][recipe], **override}


def row_name(part: str, recipe: str, model: str | None = None) -> str:
    """The part's name in results.jsonl: rows of another recipe or model than the default carry it, so that the
    summary keeps them apart.

    >>> row_name("cifar-perm", "resnet20+aug"), row_name("cifar-perm", "adapter+aug")
    ('cifar-perm', 'cifar-perm [adapter+aug]')
    >>> row_name("plain", "resnet20+aug", "simple_cnn")
    'plain [resnet20+aug, simple_cnn]'
    """
    if recipe == "resnet20+aug" and not model:
        return part
    return f"{part} [{recipe}{', ' + model if model else ''}]"


def owner_and_public(train, public_limit: int, limit: int | None):
    """(the owner's training images, the attacker's public images or None): with `public_limit`, the last
    `public_limit` images are public and the owner trains on (the first `limit` of) the rest.

    >>> from tfdisguise.datasets import ImageData
    >>> data = ImageData(np.arange(10).reshape(10, 1, 1, 1).astype("uint8"), np.zeros(10, "int64"))
    >>> owner, public = owner_and_public(data, 3, limit=5)
    >>> owner.x.ravel().tolist(), public.ravel().tolist()
    ([0, 1, 2, 3, 4], [7, 8, 9])
    >>> owner, public = owner_and_public(data, 0, limit=None)
    >>> len(owner), public is None
    (10, True)
    """
    if not public_limit:
        return (train.take(limit) if limit else train), None
    if not 0 < public_limit < len(train):
        raise ValueError(f"--public-limit must be between 1 and {len(train) - 1}; got {public_limit}")
    tail = len(train) - public_limit
    return train.take(min(tail, limit or tail)), train.x[tail:]


def inverse_stem(plain_x, public_x, key, seed: int):
    """([fixed layers], reconstructed adapt images, share of blocks placed right): the key-free inverse
    (`key_free_inverse`: spectral for RMT, scramble_search for block scrambling) from the uploads (`plain_x`
    disguised once) and the public images, as the layers flatten -> Dense(G, c) -> reshape."""
    import keras

    from tfdisguise import Disguise
    from tfdisguise.privacy.attacks import true_permutation
    from tfdisguise.privacy.attacks.inverse_map import key_free_inverse

    layer, shape = Disguise(key), key.spec.image_shape
    uploaded = np.concatenate([np.asarray(layer(plain_x[s:s + 4096].astype("float32")))
                               for s in range(0, len(plain_x), 4096)])
    g, c, estimated_perm = key_free_inverse(public_x, uploaded, key.spec, seed=seed)
    dense = keras.layers.Dense(g.shape[0], trainable=False, name="attack_inverse")
    layers = [keras.layers.Flatten(), dense, keras.layers.Reshape(shape)]
    dense.build((None, g.shape[0]))
    dense.set_weights([g, c])
    perm = true_permutation(key)
    positions = None if perm is None else float(np.mean(estimated_perm == perm))
    adapt = np.clip(uploaded[:4096].reshape(-1, g.shape[0]) @ g + c, 0, 255).reshape(-1, *shape)
    return layers, adapt, positions


def summarize(out: str) -> str:
    """summary.md (per part: final validation accuracy, mean +- sd over keys, gap to plain) and curves.png."""
    from tfdisguise.plots import new_figure, save_figure

    with open(os.path.join(out, "results.jsonl")) as f:
        results = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(out, "train.jsonl")) as f:
        epochs = [json.loads(line) for line in f if line.strip()]
    # One row per part and training-set size: --inverse-stem holds public images back, so its plain runs train
    # on fewer images than those of a run without it, and each part is compared with plain runs of its own size.
    groups = list(dict.fromkeys((r["part"], r["train_images"]) for r in results))
    # A run stopped by --max-seconds ends before its cosine schedule does, which costs accuracy: the last
    # column keeps only the runs that finished (within one epoch) their schedule.
    finished = [r for r in results if r["epochs_run"] >= r["epochs"] - 1]

    def accuracies(rows, part, size):
        return [r["final_val_accuracy"] for r in rows if r["part"] == part and r["train_images"] == size]

    lines = ["| part | disguise | training images | keys (seeds) | epochs run | final validation accuracy "
             "(mean ± sd) | gap to plain | finished runs only: accuracy, gap |", "|---|---|---|---|---|---|---|---|"]
    fig, ax = new_figure(figsize=(7, 4))
    for index, (part, size) in enumerate(groups):
        runs = [r for r in results if r["part"] == part and r["train_images"] == size]
        acc, done = mean_sd(accuracies(results, part, size)), accuracies(finished, part, size)
        done_acc = mean_sd(done)
        plain, plain_done = mean_sd(accuracies(results, "plain", size)), mean_sd(accuracies(finished, "plain", size))
        gap = "" if part == "plain" else f"{100 * (plain[0] - acc[0]):.2f}"
        done_gap = "" if part == "plain" else f", {100 * (plain_done[0] - done_acc[0]):.2f}"
        lines.append(f"| {part} | {runs[0]['spec']} | {size:,} | {len(runs)} "
                     f"| {', '.join(str(r['epochs_run']) for r in runs)} "
                     f"| {100 * acc[0]:.2f}% ± {100 * acc[1]:.2f} | {gap} "
                     f"| {100 * done_acc[0]:.2f}% ± {100 * done_acc[1]:.2f} (n={len(done)}){done_gap} |")
        label = part if sum(p == part for p, _ in groups) == 1 else f"{part} ({size:,} images)"
        for i, r in enumerate(runs):
            curve = [e["val_accuracy"] for e in epochs if e["part"] == part and e["seed"] == r["seed"]
                     and e.get("train_images", size) == size]
            ax.plot(range(1, len(curve) + 1), curve, color=f"C{index}", alpha=0.8, label=label if i == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, os.path.join(out, "curves.png"))
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(table)
    return table


def main(argv=None) -> int:
    args = parse_args(argv)  # first: a refused command line leaves the environment as it was
    # Here, not at import: the tests import every benchmark, and their later subprocesses would inherit it.
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.makedirs(args.out, exist_ok=True)
    if args.summarize:
        print(summarize(args.out))
        return 0
    if args.worker:
        train_worker(args, args.worker)
        return 0
    if args.layer_speed:
        layer_speed(args)
    if not args.data:
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p != "plain" and p not in PARTS]
    if bad:
        sys.exit(f"--parts: unknown {bad}; choose from plain, {sorted(PARTS)}")
    nonlinear = [p for p in parts if p != "plain" and p not in INVERTIBLE_PARTS]
    if args.inverse_stem and nonlinear:
        sys.exit(f"--inverse-stem: the key-free inverse takes RMT and block scrambling parts; {nonlinear} have "
                 "neither")
    # Each child takes a share of the device's memory instead of JAX's default 75% each.
    env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / max(1, args.parallel):.2f}")
    base = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--layer-speed"]
    children = []
    for part in parts:
        while sum(c.poll() is None for c in children) >= args.parallel:
            time.sleep(1)
        children.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), *base, "--worker", part], env=env))
    failed = [c.args[-1] for c in children if c.wait() != 0]
    if failed:
        print(f"failed trainings: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
