"""Checkpoint files and safe writes: the one place that touches the disk for the rest of the package.

* Formats come from the suffix, which is required: ``.ckpt`` (MindSpore's protobuf checkpoint,
  ``mindspore.save_checkpoint`` / ``load_checkpoint``) or ``.safetensors`` (the ``safetensors``
  package). Text entries ride along: string entries of a ckpt (``append_dict``), header metadata of a
  safetensors file. MindSpore's own safetensors writer is not used: it cannot store a string entry,
  and its loader drops the header metadata.
* Every writer goes through :func:`atomic_write`: the data is written under the target's own base
  name in a hidden folder beside it and moved onto the path when complete, so a failed or refused
  write leaves the path as it was and no partial file. (The base name is kept because MindRecord
  records it inside its files.)
* Readers name the file and say what is wrong: truncated, empty, not a checkpoint, the other format
  than its suffix.
* MindFormers' distributed layout (``rank_<N>/`` folders of checkpoints) is read by
  :func:`rank_folders` and :func:`checkpoint_files_in`.
"""
import contextlib
import csv
import glob
import json
import logging
import os
import shutil
import tempfile

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from mindpet_lite import _checks

logger = logging.getLogger(__name__)

FORMATS = ("ckpt", "safetensors")
SUFFIXES = {".ckpt": "ckpt", ".safetensors": "safetensors"}


# ------------------------------------------------------------------------------------------------
# paths
# ------------------------------------------------------------------------------------------------
def format_from_path(path, format=None):  # pylint: disable=redefined-builtin
    """'ckpt' or 'safetensors' from the suffix of ``path``; ``format`` (if given) must agree."""
    _checks.check_str("path", path)
    if format is not None:
        _checks.check_choice("format", format, FORMATS)
    from_suffix = SUFFIXES.get(os.path.splitext(path)[1].lower())
    if from_suffix is None:
        wanted = f".{format}" if format else ".ckpt or .safetensors"
        raise ValueError(f"path must end with {wanted} (the file format is read from the suffix), got {path!r}")
    if format is not None and format != from_suffix:
        raise ValueError(f"format={format!r} does not match the suffix of path {path!r} ({from_suffix}); "
                         f"name the file *.{format} or pass format={from_suffix!r}")
    return from_suffix


def check_output_path(path, format=None):  # pylint: disable=redefined-builtin
    """Check an output checkpoint path before any work; returns its format."""
    _checks.check_str("path", path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"path is a directory, give a file name ending in .ckpt or .safetensors: {path}")
    fmt = format_from_path(path, format)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"the directory of path does not exist: {parent}")
    return fmt


def check_new_output(path, inputs=(), overwrite=False, what="out"):
    """The one overwrite rule, checked before any work: an output that is one of the inputs (the same
    file, or inside an input folder) is refused even with ``overwrite``; an existing output needs
    ``overwrite=True`` (``--overwrite``)."""
    _checks.check_str(what, path)
    _checks.check_bool("overwrite", overwrite)
    out_real = os.path.realpath(path)
    for source in inputs:
        if not isinstance(source, (str, os.PathLike)) or not os.fspath(source):
            continue  # in-memory inputs (dicts of tensors) cannot be overwritten
        src_real = os.path.realpath(source)
        same = out_real == src_real or (os.path.exists(path) and os.path.exists(source)
                                         and os.path.samefile(path, source))
        inside = os.path.isdir(source) and os.path.commonpath([out_real, src_real]) == src_real
        if same or inside:
            where = "is" if same else "is inside"
            raise ValueError(f"{what} {path} {where} the input {os.fspath(source)}: an output never replaces "
                             "an input; choose another path")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{what} {path} already exists; pass --overwrite (API: overwrite=True) to replace it")
    return path


def check_input_file(path, what="path"):
    """Check a checkpoint file to read: it exists, is not empty, and its content fits its suffix."""
    _checks.check_str(what, path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} is a directory, expected a .ckpt or .safetensors file: {path}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: no such file: {path}")
    fmt = format_from_path(path)
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes): truncated or never written")
    content = _sniff(path)
    if fmt == "ckpt" and content == "safetensors":
        raise ValueError(f"{path} is named .ckpt but holds a safetensors file; rename it *.safetensors")
    if fmt == "safetensors" and content != "safetensors":
        raise ValueError(f"{path} is named .safetensors but does not start with a safetensors header: truncated "
                         "or corrupt, or a MindSpore .ckpt renamed (give a .ckpt file its .ckpt name)")
    return fmt


def _sniff(path):
    """'safetensors' if the file starts with a safetensors header, else 'ckpt' (protobuf)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len <= size:
            return "safetensors"
    return "ckpt"


# ------------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------------
def to_numpy(value):
    """numpy array of a Parameter, Tensor or array-like (Parameters are initialised first)."""
    if isinstance(value, Parameter) and value.has_init:
        value.init_data()
    if isinstance(value, Tensor):
        return value.asnumpy()
    return np.asarray(value)


def to_numpy_dict(mapping, what="checkpoint"):
    """``{name: numpy}`` from a dict of Parameters / Tensors / arrays (scalar and string entries dropped)."""
    if not isinstance(mapping, dict):
        raise TypeError(f"{what} must be a dict of name -> Tensor/array or a file path, got {_checks.describe(mapping)}")
    out = {}
    for name, value in mapping.items():
        if isinstance(value, (Tensor, np.ndarray)):
            out[name] = to_numpy(value)
        elif not isinstance(value, (str, int, float, bool)):
            raise TypeError(f"{what}[{name!r}] must be a Tensor or numpy array, got {_checks.describe(value)}")
    return out


# ------------------------------------------------------------------------------------------------
# safe writes
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_write(path, companions=()):
    """Yield a temporary path with ``path``'s base name, in a hidden folder beside ``path``.

    When the block ends without error the file is moved onto ``path`` (and each companion, e.g. a
    MindRecord's ``.db`` index: ``tmp + suffix`` onto ``path + suffix``); on any error nothing of the
    write is left and ``path`` is as it was. The parent directory must exist.
    """
    parent = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    staging = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    tmp = os.path.join(staging, base)
    moved = []
    try:
        yield tmp
        suffixes = ("",) + tuple(companions)
        for suffix in suffixes:  # all written, or nothing is moved and the old files stay
            if not os.path.isfile(tmp + suffix):
                raise FileNotFoundError(f"the write of {path + suffix} left no file")
            os.chmod(tmp + suffix, 0o644)  # mindspore leaves checkpoints read-only
        for suffix in suffixes:
            os.replace(tmp + suffix, path + suffix)
            moved.append(path + suffix)
    except BaseException:
        if moved:  # a file without its companions is no output: leave none of them
            for done in moved:
                _remove(done)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def write_json(path, obj):
    """Write ``obj`` as indented, key-sorted JSON, atomically; creates the parent directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    return path


def write_csv(path, header, rows):
    """Write a CSV (a header row, then ``rows``) atomically; creates the parent directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    return path


def write_checkpoint(tensors, path, format=None, text=None):  # pylint: disable=redefined-builtin
    """Write ``{name: array/Tensor}`` atomically to a ``.ckpt`` or ``.safetensors`` file.

    Args:
        text: ``{str: str}`` entries stored beside the tensors: string entries of a ckpt, header
            metadata of a safetensors file (e.g. ``{"format": "pt"}``, which transformers expects).

    Raises:
        ValueError: empty ``tensors``, a bad path / format; the path is untouched on any error.
    """
    fmt = check_output_path(path, format)
    arrays = to_numpy_dict(tensors, "tensors")
    if not arrays:
        raise ValueError(f"refusing to write an empty checkpoint to {path}")
    text = dict(text or {})
    for key, value in text.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"checkpoint text entries must be str -> str, got {_checks.describe(key)}: "
                            f"{_checks.describe(value)}")
    with atomic_write(path) as tmp:
        if fmt == "ckpt":
            items = [{"name": name, "data": Tensor(array)} for name, array in arrays.items()]
            ms.save_checkpoint(items, tmp, append_dict=text or None)
        else:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata=text or None)
    logger.info("wrote %d tensors to %s", len(arrays), path)
    return path


# ------------------------------------------------------------------------------------------------
# reads
# ------------------------------------------------------------------------------------------------
def read_checkpoint(path):
    """Read a ``.ckpt`` or ``.safetensors`` file.

    Returns:
        ``(tensors, text)``: ``{name: numpy array}`` and the ``{str: str}`` entries (string entries of
        a ckpt, the header metadata of a safetensors file).

    Raises:
        FileNotFoundError, IsADirectoryError, ValueError (unknown suffix, empty, truncated or corrupt file).
    """
    fmt = check_input_file(path)
    if fmt == "safetensors":
        try:
            with safe_open(path, framework="np") as f:
                text = dict(f.metadata() or {})
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError, TypeError) as err:
            raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err
        return dict(tensors), text
    try:
        raw = ms.load_checkpoint(path)
    except (ValueError, RuntimeError, OSError, TypeError) as err:
        raise ValueError(f"{path} is not a readable MindSpore checkpoint (truncated or corrupt?): {err}") from err
    tensors, text = {}, {}
    for name, value in raw.items():
        if isinstance(value, str):
            text[name] = value
        else:
            tensors[name] = to_numpy(value)
    return tensors, text


def checkpoint_files_in(folder, pattern="*"):
    """The ``.ckpt`` / ``.safetensors`` files of ``folder`` matching ``pattern``, sorted; hidden
    files (our temporary writes) are left out."""
    found = sorted(glob.glob(os.path.join(folder, pattern)))
    return [f for f in found if os.path.splitext(f)[1] in SUFFIXES and os.path.isfile(f)
            and not os.path.basename(f).startswith(".")]


def rank_folders(path):
    """``[(rank, folder)]`` of the ``rank_<N>/`` subfolders of ``path`` (MindFormers' distributed
    layout), sorted by rank; empty when there are none."""
    ranks = []
    for folder in glob.glob(os.path.join(path, "rank_*")):
        tail = os.path.basename(folder)[len("rank_"):]
        if os.path.isdir(folder) and tail.isdigit():
            ranks.append((int(tail), folder))
    return sorted(ranks)


def newest(files):
    """The most recently modified of ``files`` (MindFormers keeps several steps per rank)."""
    return max(files, key=os.path.getmtime)
