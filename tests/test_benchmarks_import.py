"""Every benchmark script imports against the current library (they run outside CI, so a rename would go unseen)."""

import importlib.util
import pathlib

import pytest

BENCHMARKS = sorted((pathlib.Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports(path):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the scripts run their work only under __main__
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"


def test_there_are_benchmarks():
    assert {p.name for p in BENCHMARKS} >= {"disguise_speed.py", "model_gap.py", "attack_strength.py",
                                           "serving_latency.py", "shard_dtype.py"}
