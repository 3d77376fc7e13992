"""MindRecord -> batched ``mindspore.dataset`` pipeline, sharded by data-parallel rank.

Row order (what data-parallel training relies on)
-------------------------------------------------
Let ``N`` be the rows in the file, ``R = rank_size``, ``B = batch_size``. For epoch ``e`` in
``0 .. repeat-1`` the epoch order is::

    perm_e = numpy.arange(N)                                         # shuffle=False
    perm_e = numpy.random.default_rng([seed, e]).permutation(N)      # shuffle=True

Rank ``r`` takes ``perm_e[r::R]`` (positions ``r, r+R, r+2R, ...``: with ``shuffle=False`` this is
the order ``MindDataset(num_shards=R, shard_id=r, shuffle=False)`` gives) cut to

* ``drop_remainder=True``: ``steps * B`` rows, ``steps = N // (B * R)``;
* ``drop_remainder=False``: ``N // R`` rows, so every rank yields the same number of batches (at
  most ``R - 1`` rows per epoch are left out when ``R > 1``).

Each epoch is batched on its own (a batch never spans two epochs) and the epochs follow one another.
So with ``drop_remainder=True`` the rank shards of an epoch are disjoint, and at every step ``t`` of
every epoch::

    global = create_dataset(path, B * R, rank_size=1, <same shuffle, seed, repeat>) batch t
    global.reshape(B, R, -1)[:, r] == create_dataset(path, B, rank_id=r, rank_size=R, ...) batch t

i.e. row ``j * R + r`` of the single-process global batch is row ``j`` of rank ``r``'s batch, and the
union of the rank batches at step ``t`` is exactly the global batch at step ``t``. Every rank yields
``steps * repeat`` batches. With ``drop_remainder=False`` each epoch may end on a short batch, and
the same relation holds when ``N`` is a multiple of ``R`` (``global.reshape(-1, R, ...)``).

The order does not depend on ``mindspore.dataset.config`` seeds nor on MindSpore's own shuffle. Pass
the number of epochs as ``repeat`` and iterate the pipeline once: with ``shuffle=True`` the epochs
are ``repeat`` readers chained by ``concat`` (a sampler cannot change between epochs), so iterating
the returned pipeline a second time replays the same orders.

Observed for reference (MindSpore 2.9): ``MindDataset(num_shards=R, shard_id=r, shuffle=False)``
pads a short shard by wrapping to row 0 when ``R`` does not divide ``N``, and with ``shuffle=True``
its per-rank orders agree with the single-process order only in the first epoch; the explicit
``SubsetSampler`` used here avoids both.
"""
import logging
import os

import mindspore.dataset as ds
import numpy as np
from mindspore import dtype as mstype
from mindspore.mindrecord import FileReader

from mindpet_lite._checks import check_bool, check_positive_int, describe, is_int

logger = logging.getLogger(__name__)

__all__ = ["create_dataset", "dataset_num_rows", "check_token_ids"]

COLUMNS = ("input_ids", "labels")
_INT_TYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")


def _short_error(err):
    """The useful line of a MindSpore RuntimeError (they carry a long framed report)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for line in lines:
        if line.startswith("[ERROR]"):
            return line[len("[ERROR]"):].strip()
    for line in lines:
        if not set(line) <= set("-") and "Error Message" not in line:
            return line
    return str(err)


def _check_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be the path of a .mindrecord file, got {describe(path)}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"path must be a MindRecord file, got the directory {path}")
    return path


def _inspect(path):
    """(num_rows, schema dict) of a MindRecord file; ValueError if it is not one."""
    try:
        reader = FileReader(path, num_consumer=1)
    except Exception as err:  # MindSpore raises RuntimeError (sometimes others) on a bad file
        raise ValueError(f"{path} is not a readable MindRecord file (it needs its index "
                         f"{path}.db beside it): {_short_error(err)}") from err
    try:
        return int(reader.len()), dict(reader.schema())
    finally:
        reader.close()


def _stored_length(path, schema):
    """The stored row length of input_ids and labels (read from a row if the schema says -1)."""
    lengths = {}
    for col in COLUMNS:
        shape = list(schema[col].get("shape") or [])
        if len(shape) != 1 and shape:
            raise ValueError(f"{path}: column '{col}' must be 1-D, its schema shape is {shape}")
        lengths[col] = shape[0] if shape else -1
    if min(lengths.values()) <= 0:
        reader = FileReader(path, num_consumer=1, columns=list(COLUMNS))
        try:
            row = next(iter(reader.get_next()))
        finally:
            reader.close()
        lengths = {col: int(np.asarray(row[col]).size) for col in COLUMNS}
    if lengths["input_ids"] != lengths["labels"]:
        raise ValueError(f"{path}: input_ids rows hold {lengths['input_ids']} tokens but labels rows "
                         f"hold {lengths['labels']}")
    return lengths["input_ids"]


def dataset_num_rows(path):
    """Number of rows in a MindRecord file (all its shards).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a MindRecord file.
    """
    return _inspect(_check_path(path))[0]


def check_token_ids(path, vocab_size, ignore_index=-100):
    """Refuse data a model of ``vocab_size`` tokens cannot train on, before any step runs: an input id
    outside ``[0, vocab_size)`` (a negative id or one past the embedding table would fail deep inside
    the graph's Gather), a label outside it other than ``ignore_index``, and data whose every label is
    ``ignore_index`` (the loss would be 0 and the adapter would learn nothing). Returns the number of
    label tokens.
    """
    vocab_size = check_positive_int("vocab_size", vocab_size)
    path = _check_path(path)
    reader = FileReader(path, num_consumer=1, columns=list(COLUMNS))
    label_tokens = 0
    try:
        for row_index, row in enumerate(reader.get_next()):
            ids = np.asarray(row["input_ids"]).reshape(-1)
            labels = np.asarray(row["labels"]).reshape(-1)
            bad = ids[(ids < 0) | (ids >= vocab_size)]
            if bad.size:
                raise ValueError(f"{path}: row {row_index} holds input id {int(bad[0])}, outside the model's "
                                 f"vocabulary [0, {vocab_size}) (tokenized for another model?)")
            kept = labels[labels != ignore_index]
            bad = kept[(kept < 0) | (kept >= vocab_size)]
            if bad.size:
                raise ValueError(f"{path}: row {row_index} holds label {int(bad[0])}, neither a token id in "
                                 f"[0, {vocab_size}) nor the ignore index {ignore_index}")
            label_tokens += int(kept.size)
    finally:
        reader.close()
    if not label_tokens:
        raise ValueError(f"{path}: every label is the ignore index {ignore_index}: there is nothing to learn "
                         "(were the answers cut off by seq_length?)")
    return label_tokens


def _epoch_indices(num_rows, rows_per_rank, rank_id, rank_size, shuffle, seed, epoch):
    """Row indices rank `rank_id` reads in `epoch` (see the module docstring)."""
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    else:
        order = np.arange(num_rows)
    return order[rank_id::rank_size][:rows_per_rank].astype(np.int64).tolist()


def create_dataset(path, batch_size, seq_length=None, rank_id=0, rank_size=1, shuffle=True, seed=1234,
                   drop_remainder=True, num_parallel_workers=1, repeat=1):
    """A ``MindDataset`` pipeline of batches with int32 columns ``input_ids`` and ``labels``.

    Args:
        path: a MindRecord file with columns ``input_ids`` and ``labels`` (e.g. from
            :func:`~mindpet_lite.data.alpaca.convert_alpaca`).
        batch_size: rows per batch on this rank (the global batch is ``batch_size * rank_size``).
        seq_length: if given, the model's sequence length: rows must hold ``seq_length + 1`` tokens.
        rank_id, rank_size: this worker's data-parallel rank and the number of ranks.
        shuffle: shuffle each epoch with ``numpy.random.default_rng([seed, epoch])``.
        seed: int >= 0, the shuffle seed (the same on every rank).
        drop_remainder: drop the rows that do not fill a global batch (see the module docstring).
        num_parallel_workers: workers of the read and batch operations (does not change the order).
        repeat: number of epochs in the pipeline.

    Returns:
        mindspore.dataset.Dataset: batches ``(input_ids, labels)``, each int32 of shape
        ``(batch_size, stored_length)``. Row order and sharding: see the module docstring.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a MindRecord file; it lacks ``input_ids`` or ``labels`` (the
            message lists the columns found); rows do not hold ``seq_length + 1`` tokens; each rank
            would get fewer than `batch_size` rows; `rank_id` not in ``[0, rank_size)``.
        TypeError: an argument of the wrong type.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    rank_size = check_positive_int("rank_size", rank_size)
    if not is_int(rank_id):
        raise TypeError(f"rank_id must be an int in [0, rank_size={rank_size}), got {describe(rank_id)}")
    if not 0 <= rank_id < rank_size:
        raise ValueError(f"rank_id must be an int in [0, rank_size={rank_size}), got {describe(rank_id)}")
    if seq_length is not None:
        seq_length = check_positive_int("seq_length", seq_length)
    check_bool("shuffle", shuffle)
    check_bool("drop_remainder", drop_remainder)
    if not is_int(seed) or seed < 0:
        raise (TypeError if not is_int(seed) else ValueError)(f"seed must be an int >= 0, got {describe(seed)}")
    num_parallel_workers = check_positive_int("num_parallel_workers", num_parallel_workers)
    repeat = check_positive_int("repeat", repeat)
    path = _check_path(path)

    num_rows, schema = _inspect(path)
    missing = [col for col in COLUMNS if col not in schema]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}: the columns found are {sorted(schema)}; "
                         f"expected input_ids and labels")
    for col in COLUMNS:
        if schema[col].get("type") not in _INT_TYPES:
            raise ValueError(f"{path}: column '{col}' must hold integers, its type is {schema[col].get('type')}")
    length = _stored_length(path, schema)
    if seq_length is not None and length != seq_length + 1:
        raise ValueError(f"seq_length={seq_length} does not match {path}: its rows hold {length} tokens, "
                         f"which is seq_length + 1 for seq_length={length - 1}")
    rows_per_rank = num_rows // rank_size
    if rows_per_rank < batch_size:
        raise ValueError(f"{path} has {num_rows} rows: with rank_size={rank_size} each rank gets "
                         f"{rows_per_rank} rows, fewer than batch_size={batch_size} (worker count larger "
                         f"than the data); use fewer ranks, a smaller batch_size or more data")
    if drop_remainder:
        rows_per_rank = (num_rows // (batch_size * rank_size)) * batch_size

    def epoch_pipeline(epoch):
        indices = _epoch_indices(num_rows, rows_per_rank, rank_id, rank_size, shuffle, seed, epoch)
        data = ds.MindDataset(path, columns_list=list(COLUMNS), sampler=ds.SubsetSampler(indices),
                              num_parallel_workers=num_parallel_workers)
        for col in COLUMNS:
            if schema[col]["type"] != "int32":
                data = data.map(operations=ds.transforms.TypeCast(mstype.int32), input_columns=[col])
        return data.batch(batch_size, drop_remainder=drop_remainder, num_parallel_workers=num_parallel_workers)

    data = epoch_pipeline(0)
    if repeat > 1 and not shuffle:  # every epoch reads the same rows: one reader, repeated
        data = data.repeat(repeat)
    elif repeat > 1:  # one reader per epoch (a sampler cannot change between epochs), chained
        data = data.concat([epoch_pipeline(e) for e in range(1, repeat)])
    logger.info("dataset %s: %d rows, rank %d of %d reads %d rows per epoch, %d epoch(s), %d batches of %d",
                path, num_rows, rank_id, rank_size, rows_per_rank, repeat, data.get_dataset_size(), batch_size)
    return data
