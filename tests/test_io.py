import os

import pytest

from tfdisguise import io


def test_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    path = tmp_path / "a.json"
    io.write_json(str(path), {"v": 1})
    with pytest.raises(RuntimeError), io.atomic_file(str(path)) as f:
        f.write("half")
        raise RuntimeError("killed mid-write")
    assert io.read_json(str(path)) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]


def test_nan_is_refused_rather_than_written_as_invalid_json(tmp_path):
    with pytest.raises(ValueError):
        io.write_json(str(tmp_path / "x.json"), {"v": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_atomic_dir_publishes_only_complete_directories(tmp_path):
    out = tmp_path / "set"
    with pytest.raises(RuntimeError), io.atomic_dir(str(out)) as tmp:
        (open(os.path.join(tmp, "part"), "w")).close()
        raise RuntimeError("pipeline died")
    assert os.listdir(tmp_path) == []
    with io.atomic_dir(str(out)) as tmp, open(os.path.join(tmp, "done"), "w") as f:
        f.write("1")
    assert os.listdir(out) == ["done"]
    with pytest.raises(FileExistsError), io.atomic_dir(str(out)):
        pass
    with io.atomic_dir(str(out), replace=True) as tmp, open(os.path.join(tmp, "new"), "w") as f:
        f.write("2")
    assert os.listdir(out) == ["new"]
    assert sorted(os.listdir(tmp_path)) == ["set"]


def test_new_parent_directories_get_the_requested_mode(tmp_path):
    path = tmp_path / "owner" / "key.txt"
    io.write_text(str(path), "s", mode=0o600, dir_mode=0o700)
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    assert os.stat(path).st_mode & 0o777 == 0o600
