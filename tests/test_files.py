"""mindpet_lite._files: atomic writes, checkpoint round trips, readers that name the bad file, JSON."""
import json
import os
import shutil

import numpy as np
import pytest

from mindpet_lite import _files


def _listing(folder):
    """Every entry of `folder`, hidden ones included (a failed write must leave none)."""
    return sorted(os.listdir(folder))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------------------------
# atomic_write
# ------------------------------------------------------------------------------------------------
def test_atomic_write_moves_the_file_in_place(tmp_path):
    path = str(tmp_path / "out.bin")
    with _files.atomic_write(path) as tmp:
        assert tmp != path and os.path.basename(tmp) == "out.bin"  # same base name, elsewhere
        assert os.path.dirname(os.path.dirname(tmp)) == str(tmp_path)  # beside the target: same filesystem
        with open(tmp, "wb") as f:
            f.write(b"new")
        assert not os.path.exists(path)  # nothing at the path until the block ends
    assert _read(path) == b"new"
    assert _listing(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("existing", [True, False], ids=["over_a_file", "new_file"])
def test_atomic_write_that_raises_leaves_the_target_and_no_leftovers(tmp_path, existing):
    path = str(tmp_path / "out.bin")
    if existing:
        with open(path, "wb") as f:
            f.write(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with _files.atomic_write(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("boom")
    assert _listing(tmp_path) == (["out.bin"] if existing else [])
    if existing:
        assert _read(path) == b"old"


def test_atomic_write_moves_companions_with_the_file(tmp_path):
    path = str(tmp_path / "data.mindrecord")
    with _files.atomic_write(path, companions=(".db",)) as tmp:
        for suffix, content in (("", b"records"), (".db", b"index")):
            with open(tmp + suffix, "wb") as f:
                f.write(content)
    assert _listing(tmp_path) == ["data.mindrecord", "data.mindrecord.db"]
    assert (_read(path), _read(path + ".db")) == (b"records", b"index")


def test_atomic_write_without_its_companion_leaves_neither(tmp_path):
    path = str(tmp_path / "data.mindrecord")
    with pytest.raises(FileNotFoundError):
        with _files.atomic_write(path, companions=(".db",)) as tmp:
            with open(tmp, "wb") as f:  # the .db index is never written
                f.write(b"records")
    assert _listing(tmp_path) == []


def test_atomic_write_without_its_companion_keeps_the_old_pair(tmp_path):
    path = str(tmp_path / "data.mindrecord")
    for suffix, content in (("", b"old records"), (".db", b"old index")):
        with open(path + suffix, "wb") as f:
            f.write(content)
    with pytest.raises(FileNotFoundError):
        with _files.atomic_write(path, companions=(".db",)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"new records")
    assert _listing(tmp_path) == ["data.mindrecord", "data.mindrecord.db"]
    assert (_read(path), _read(path + ".db")) == (b"old records", b"old index")


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
TENSORS = {
    "layer.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "layer.bias": np.array([-1.5, 0.0, 2.25], np.float16),
    "step": np.array([7, 8], np.int32),
}
TEXT = {"note": "trained on é, 中文", "config": json.dumps({"lora_rank": 4})}


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_checkpoint_round_trip_with_text(tmp_path, suffix):
    path = str(tmp_path / f"w{suffix}")
    assert _files.write_checkpoint(TENSORS, path, text=TEXT) == path
    tensors, text = _files.read_checkpoint(path)
    assert sorted(tensors) == sorted(TENSORS)
    for name, array in TENSORS.items():
        assert tensors[name].dtype == array.dtype and tensors[name].shape == array.shape, name
        np.testing.assert_array_equal(tensors[name], array)
    assert text == TEXT
    assert _listing(tmp_path) == [f"w{suffix}"]
    # without text entries: none read back
    plain = str(tmp_path / f"plain{suffix}")
    _files.write_checkpoint(TENSORS, plain)
    assert _files.read_checkpoint(plain)[1] == {}


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_read_checkpoint_of_an_empty_file_names_it(tmp_path, suffix):
    path = str(tmp_path / f"empty{suffix}")
    open(path, "wb").close()
    with pytest.raises(ValueError, match="empty") as info:
        _files.read_checkpoint(path)
    assert path in str(info.value)


def test_read_checkpoint_of_a_ckpt_named_safetensors_names_it(tmp_path):
    src = _files.write_checkpoint(TENSORS, str(tmp_path / "w.ckpt"))
    path = str(tmp_path / "w.safetensors")
    shutil.copy(src, path)
    with pytest.raises(ValueError) as info:
        _files.read_checkpoint(path)
    assert path in str(info.value) and "safetensors" in str(info.value)


def test_read_checkpoint_of_a_safetensors_named_ckpt_names_it(tmp_path):
    src = _files.write_checkpoint(TENSORS, str(tmp_path / "w.safetensors"))
    path = str(tmp_path / "w.ckpt")
    shutil.copy(src, path)
    with pytest.raises(ValueError, match="named .ckpt but holds a safetensors file") as info:
        _files.read_checkpoint(path)
    assert path in str(info.value)


def test_failed_checkpoint_write_leaves_the_old_file(tmp_path):
    path = str(tmp_path / "w.ckpt")
    with open(path, "wb") as f:
        f.write(b"old")
    with pytest.raises(TypeError, match="text entries"):
        _files.write_checkpoint(TENSORS, path, text={"n": 1})
    with pytest.raises(ValueError, match="empty checkpoint"):
        _files.write_checkpoint({}, path)
    assert _read(path) == b"old" and _listing(tmp_path) == ["w.ckpt"]


# ------------------------------------------------------------------------------------------------
# JSON
# ------------------------------------------------------------------------------------------------
def test_write_json_is_sorted_and_indented(tmp_path):
    path = str(tmp_path / "sub" / "meta.json")  # the parent is created
    obj = {"b": 1, "a": {"z": [1, 2], "y": "text"}, "c": None}
    assert _files.write_json(path, obj) == path
    with open(path, encoding="utf-8") as f:
        content = f.read()
    assert content == ('{\n  "a": {\n    "y": "text",\n    "z": [\n      1,\n      2\n    ]\n  },\n'
                       '  "b": 1,\n  "c": null\n}\n')
    assert json.loads(content) == obj
    assert _listing(tmp_path / "sub") == ["meta.json"]
