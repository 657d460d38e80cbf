import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_walkthrough_notebook_executes_and_draws(tmp_path, monkeypatch):
    temp = tmp_path / "tmp"  # the kernel's temporary directory: the notebook must leave no key behind in it
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "walkthrough.ipynb"), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    left = [os.path.join(d, n) for d, _, files in os.walk(temp) for n in files if n == "key.json"]
    assert not left and not [n for n in os.listdir(temp) if n.startswith("tfdisguise-walkthrough-")], left
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
    assert not errors, errors
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # preview, curves, reconstructions
    text = "".join(o.get("text", "") for o in outputs)
    assert "accuracy through the server" in text and "known-plaintext" in text
