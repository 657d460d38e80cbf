"""The README's examples run: its Python blocks execute on tiny data, and every `tfdisguise` command line parses.

A README example that drifts from the code (a renamed flag, a changed signature) fails here, not on a newcomer's
first try. The Python blocks run unchanged; the test only supplies the names they take as given (`x_train`,
`model`, `images`, a served model), at toy sizes.
"""

import os
import re
import shlex
import stat

import numpy as np
import pytest
from helpers import make_key
from test_privacy import synthetic_classes

from tfdisguise import cli
from tfdisguise.export import export
from tfdisguise.serving.registry import ModelRegistry
from tfdisguise.serving.server import ModelServer
from tfdisguise.train import TrainConfig, train_classifier

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def code_blocks(language: str) -> list[str]:
    """The README's fenced blocks in `language`, in order.

    >>> any("tfdisguise keygen" in block for block in code_blocks("bash"))
    True
    """
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return [m.group(1) for m in re.finditer(rf"^```{language}\n(.*?)^```", text, re.S | re.M)]


def command_lines(block: str) -> list[list[str]]:
    """The `tfdisguise ...` commands of a bash block as argument lists (continuations joined, comments and
    `[--optional]` brackets dropped).

    >>> command_lines("tfdisguise keygen --image-shape 28,28,1 \\\\\\n  --out k.json   # a comment\\nls")
    [['keygen', '--image-shape', '28,28,1', '--out', 'k.json']]
    """
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("tfdisguise "):
            line = re.sub(r"\[([^\]]*)\]", r"\1", line)
            commands.append(shlex.split(line)[1:])
    return commands


def test_every_readme_command_line_parses():
    commands = [c for block in code_blocks("bash") for c in command_lines(block)]
    # The running example, CIFAR, deploy and serve blocks: a change that drops one of them should be deliberate.
    assert {c[0] for c in commands} >= {"keygen", "preview", "disguise", "train", "calibrate", "export", "serve",
                                        "predict"}
    parser = cli.build_parser()
    for args in commands:
        try:
            parser.parse_args(args)
        except SystemExit as e:  # argparse exits with 2 on an unknown flag or a bad value
            pytest.fail(f"the README's `tfdisguise {shlex.join(args)}` does not parse (exit {e.code})")


def test_python_start_to_finish_runs(tmp_path, monkeypatch):
    from tfdisguise import Spec, datasets

    block = next(b for b in code_blocks("python") if "Key.generate" in b)
    assert "epochs=10" in block
    # Tiny sizes: the README's real source, cut to 256 digits, and 2 epochs instead of 10.
    load = datasets.load
    monkeypatch.setattr(datasets, "load", lambda *a, **k: load(*a, **{**k, "limit": 256}))
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(compile(block.replace("epochs=10", "epochs=2"), "README.md (Python, start to finish)", "exec"), names)
    path = tmp_path / "owner" / "key.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "the README promises a private key file"
    assert names["key"].spec == Spec.recommended((28, 28, 1))
    history = names["model"].history.history
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    assert names["model"].count_params() > 0 and len(names["data"]) == 256


def test_client_block_runs_against_the_embedded_server(tmp_path):
    block = next(b for b in code_blocks("python") if "DisguisedClient" in b)
    key = make_key(image_shape=(8, 8, 1), block_size=4)
    x, y = synthetic_classes(np.random.default_rng(0), n=64)
    model, _ = train_classifier(x, y, key=key, config=TrainConfig(epochs=1, batch_size=32), progress=False)
    export(model, str(tmp_path), "mnist", key=key)
    server = ModelServer(ModelRegistry.from_flags(model_name="mnist", model_base_path=str(tmp_path / "mnist")),
                         port=0, host="127.0.0.1").start()
    block = block.replace("localhost:8500", f"127.0.0.1:{server.port}")  # the README's port may be taken here
    try:
        import tfdisguise

        names = {"tfdisguise": tfdisguise, "key": key, "images": x[:5]}
        exec(compile(block, "README.md (client)", "exec"), names)
        np.testing.assert_array_equal(names["out"]["class_id"],
                                      np.argmax(model.predict(tfdisguise.disguise(x[:5], key), verbose=0), -1))
    finally:
        server.stop(grace=1)


def test_owner_side_layer_block_builds_and_trains():
    import keras

    import tfdisguise

    block = next(b for b in code_blocks("python") if "tfdisguise.Disguise(key)" in b)
    key = tfdisguise.Key.generate(image_shape=(28, 28, 1))
    classifier = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(10)])
    names = {"keras": keras, "tfdisguise": tfdisguise, "key": key, "classifier": classifier}
    exec(compile(block, "README.md (owner-side layer)", "exec"), names)
    model = names["model"]
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1)).astype(np.uint8)
    history = model.fit(x, np.arange(16) % 10, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_every_python_block_is_executed_by_a_test():
    tested = ("Key.generate(image_shape=data.image_shape)", "DisguisedClient", "tfdisguise.Disguise(key)")
    for block in code_blocks("python"):
        assert any(marker in block for marker in tested), f"a README Python block no test runs:\n{block}"
