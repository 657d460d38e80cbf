"""benchmarks/model_gap.py end to end on a tiny CIFAR-shaped file (one epoch, one key)."""

import importlib.util
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("model_gap", os.path.join(ROOT, "benchmarks", "model_gap.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_gap_runs_plain_once_and_summarizes(rng, tmp_path):
    os.makedirs(tmp_path / "data" / "cifar10")
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "data" / "cifar10" / "train.npz", x=x, y=np.arange(40) % 10)
    bench = _load_benchmark()
    bench.RECIPES["cifar10"]["tiny"] = {"model": "block_vit", "model_options": {"dim": 8, "depth": 1, "heads": 2,
                                                                                  "block_size": 8}}
    for name, permute in (("tiny-a", False), ("tiny-b", True)):
        bench.PARTS[name] = {"data": "cifar10", "spec": {"block_size": 8, "permute": permute, "noise": 25}}
    out = str(tmp_path / "out")
    argv = ["--data", str(tmp_path / "data"), "--parts", "tiny-a,tiny-b", "--recipes", "tiny",
            "--epochs", "1", "--keys", "1", "--batch-size", "16", "--out", out, "--resume"]
    summary = bench.main(argv)
    with open(os.path.join(out, "results.jsonl")) as f:
        records = [json.loads(line) for line in f]
    # One plain run serves both parts; one disguised run per part.
    assert sorted((r["part"], r["side"]) for r in records) == [("cifar10", "plain"), ("tiny-a", "disguised"),
                                                               ("tiny-b", "disguised")]
    assert {r["fingerprint"] is None for r in records if r["side"] == "plain"} == {True}
    assert summary["tiny-a"]["best_plain"] == "tiny"
    assert set(os.listdir(out)) >= {"summary.md", "summary.json", "curves_tiny-a.png", "curves_tiny-b.png"}
    # --resume skips what is done.
    bench.main(argv)
    with open(os.path.join(out, "results.jsonl")) as f:
        assert len(f.readlines()) == 3
