"""What `import tfdisguise` loads, and that the lazily loaded public names still resolve."""

import importlib
import json
import subprocess
import sys

import pytest

import tfdisguise


def _fresh(code: str) -> dict:
    """Runs `code` in a new interpreter; it prints a JSON object, returned here."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_loads_no_serving_stack_and_leaves_the_environment_alone():
    seen = _fresh("import json, os, sys\n"
                  "before = dict(os.environ)\n"
                  "import tfdisguise\n"
                  "print(json.dumps({'modules': sorted(m for m in ('grpc', 'tensorflow_serving', 'tensorflow', 'keras')"
                  " if m in sys.modules), 'environ_changed': dict(os.environ) != before}))")
    assert seen == {"modules": [], "environ_changed": False}


def test_the_command_line_parser_loads_no_tensorflow():
    # What `tfdisguise --help` needs: it answers at once instead of after TensorFlow's start-up.
    seen = _fresh("import json, sys\n"
                  "from tfdisguise import cli\n"
                  "cli.build_parser().format_help()\n"
                  "print(json.dumps(sorted(m for m in ('grpc', 'tensorflow', 'keras') if m in sys.modules)))")
    assert seen == []


def test_serving_loads_on_first_use():
    seen = _fresh("import json, sys\n"
                  "import tfdisguise\n"
                  "client = tfdisguise.DisguisedClient\n"
                  "print(json.dumps([client.__module__, 'grpc' in sys.modules, 'tensorflow_serving' in sys.modules]))")
    assert seen == ["tfdisguise.serving.client", True, True]


def test_every_public_name_resolves():
    from tfdisguise import DisguisedClient, Key
    from tfdisguise.serving.client import DisguisedClient as defined

    assert DisguisedClient is defined and Key is tfdisguise.Key
    assert all(getattr(tfdisguise, name) is not None for name in tfdisguise.__all__)
    assert set(tfdisguise.__all__) <= set(dir(tfdisguise))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = tfdisguise.Nope


def test_export_stays_the_function_once_its_module_is_loaded():
    module = importlib.import_module("tfdisguise.export")  # the submodule that shares the function's name

    assert tfdisguise.export is module.export
    assert callable(tfdisguise.export)
