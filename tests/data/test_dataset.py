"""create_dataset: batches, dtypes, checks, and the rank-sharding order guarantee."""
import json
import os
import re

import numpy as np
import pytest
import mindspore.dataset as ds
from mindspore.mindrecord import FileWriter

from mindpet_lite.data import ByteTokenizer, convert_alpaca, create_dataset, dataset_num_rows

SEQ = 8  # rows hold SEQ + 1 tokens


def write_rows(path, num_rows, length=SEQ + 1, dtype="int32", shape=None, columns=("input_ids", "labels")):
    """Row i: input_ids = i * 1000 + arange(length), labels = -i (so a row's id is easy to read back)."""
    shape = [length] if shape is None else shape
    writer = FileWriter(str(path), shard_num=1, overwrite=True)
    writer.add_schema({c: {"type": dtype, "shape": shape} for c in columns}, "test rows")
    np_dtype = np.dtype(dtype)
    rows = []
    for i in range(num_rows):
        rows.append({columns[0]: (i * 1000 + np.arange(length)).astype(np_dtype),
                     columns[1]: np.full(length, -i, dtype=np_dtype)})
    writer.write_raw_data(rows)
    writer.commit()
    return str(path)


def batches(data):
    return [(b["input_ids"], b["labels"]) for b in data.create_dict_iterator(output_numpy=True, num_epochs=1)]


def row_ids(batch_list):
    """Per batch, the row number of each row (read from input_ids[:, 0] // 1000)."""
    return [(ids[:, 0] // 1000).tolist() for ids, _ in batch_list]


@pytest.fixture(scope="module")
def rows16(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("d16") / "rows16.mindrecord", 16)


@pytest.fixture(scope="module")
def rows17(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("d17") / "rows17.mindrecord", 17)


def test_batches_shapes_dtypes_and_order(rows17):
    assert dataset_num_rows(rows17) == 17
    data = create_dataset(rows17, 4, seq_length=SEQ, shuffle=False)
    assert data.get_dataset_size() == 4
    assert data.get_col_names() == ["input_ids", "labels"]
    out = batches(data)
    assert len(out) == 4
    for ids, labels in out:
        assert ids.shape == (4, SEQ + 1) and labels.shape == (4, SEQ + 1)
        assert ids.dtype == np.int32 and labels.dtype == np.int32
        np.testing.assert_array_equal(ids % 1000, np.tile(np.arange(SEQ + 1), (4, 1)))
        np.testing.assert_array_equal(labels[:, 0], -(ids[:, 0] // 1000))
    assert row_ids(out) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    kept = create_dataset(rows17, 4, shuffle=False, drop_remainder=False)
    assert row_ids(batches(kept))[-1] == [16]


def test_shard_order_matches_minddataset_num_shards(rows17):
    """shuffle=False: rank r reads rows r, r+R, ... as MindDataset(num_shards=R, shard_id=r) does."""
    for rank_size in (2, 3):
        for rank in range(rank_size):
            native = ds.MindDataset(rows17, num_shards=rank_size, shard_id=rank, shuffle=False)
            native_rows = [int(r["input_ids"][0]) // 1000 for r in native.create_dict_iterator(output_numpy=True)]
            ours = sum(row_ids(batches(create_dataset(rows17, 1, rank_id=rank, rank_size=rank_size,
                                                      shuffle=False, drop_remainder=False))), [])
            assert ours == list(range(rank, 17, rank_size))[:17 // rank_size]
            assert native_rows[:len(ours)] == ours


def test_two_ranks_disjoint_cover_and_equal_global_batch(rows16):
    """The union of the rank batches at step t is the 1-process global batch at step t."""
    B, R = 2, 2
    global_batches = batches(create_dataset(rows16, B * R, shuffle=False))
    ranks = [batches(create_dataset(rows16, B, rank_id=r, rank_size=R, shuffle=False)) for r in range(R)]
    rows = [sum(row_ids(rb), []) for rb in ranks]
    assert rows[0] == [0, 2, 4, 6, 8, 10, 12, 14] and rows[1] == [1, 3, 5, 7, 9, 11, 13, 15]
    assert not set(rows[0]) & set(rows[1])
    assert sorted(rows[0] + rows[1]) == list(range(16))  # the whole data
    assert len(ranks[0]) == len(ranks[1]) == len(global_batches) == 4
    for t, (g_ids, g_labels) in enumerate(global_batches):
        for r in range(R):
            ids, labels = ranks[r][t]
            np.testing.assert_array_equal(g_ids.reshape(B, R, -1)[:, r], ids)
            np.testing.assert_array_equal(g_labels.reshape(B, R, -1)[:, r], labels)
        union = sorted(row_ids([ranks[0][t]])[0] + row_ids([ranks[1][t]])[0])
        assert union == sorted(row_ids([global_batches[t]])[0])


@pytest.mark.parametrize("shuffle", [False, True])
def test_uneven_rows_same_steps_no_duplicates(rows17, shuffle):
    """17 rows, 2 ranks, batch 3: every rank and the 1-process run take 17 // 6 = 2 steps per epoch."""
    B, R, repeat = 3, 2, 2
    kw = dict(shuffle=shuffle, seed=7, repeat=repeat)
    global_batches = batches(create_dataset(rows17, B * R, **kw))
    ranks = [batches(create_dataset(rows17, B, rank_id=r, rank_size=R, **kw)) for r in range(R)]
    assert len(global_batches) == len(ranks[0]) == len(ranks[1]) == 2 * repeat
    for t, (g_ids, _) in enumerate(global_batches):
        for r in range(R):
            np.testing.assert_array_equal(g_ids.reshape(B, R, -1)[:, r], ranks[r][t][0])
    for epoch in range(repeat):
        steps = slice(2 * epoch, 2 * epoch + 2)
        seen = [sum(row_ids(rb[steps]), []) for rb in ranks]
        assert not set(seen[0]) & set(seen[1])
        assert len(set(seen[0] + seen[1])) == 12


def test_shuffle_is_seeded_per_epoch_and_documented(rows16):
    first = row_ids(batches(create_dataset(rows16, 4, seed=3, repeat=3)))
    again = row_ids(batches(create_dataset(rows16, 4, seed=3, repeat=3)))
    other = row_ids(batches(create_dataset(rows16, 4, seed=4, repeat=3)))
    assert first == again and first != other
    epochs = [sum(first[4 * e:4 * e + 4], []) for e in range(3)]
    for e, order in enumerate(epochs):
        assert sorted(order) == list(range(16))  # each epoch a permutation
        assert order == np.random.default_rng([3, e]).permutation(16).tolist()  # the documented formula
    assert epochs[0] != epochs[1]
    # 2 ranks, 2 parallel workers: the same global relation, epoch after epoch
    ranks = [row_ids(batches(create_dataset(rows16, 2, rank_id=r, rank_size=2, seed=3, repeat=3,
                                            num_parallel_workers=2))) for r in range(2)]
    for t, global_rows in enumerate(first):
        assert global_rows[0::2] == ranks[0][t] and global_rows[1::2] == ranks[1][t]


def test_alpaca_file_round_trip(tmp_path):
    records = [{"instruction": f"count to {i}", "output": " ".join(map(str, range(i)))} for i in range(8)]
    src = tmp_path / "a.json"
    src.write_text(json.dumps(records))
    dst = str(tmp_path / "a.mindrecord")
    convert_alpaca(str(src), dst, ByteTokenizer(), 191)
    out = batches(create_dataset(dst, 4, seq_length=191, shuffle=False))
    assert len(out) == 2
    ids, labels = out[0]
    assert ids.shape == (4, 192) and ids.dtype == np.int32 and labels.dtype == np.int32
    assert (ids[:, 0] == 1).all() and (labels[:, 0] == -100).all()
    with pytest.raises(ValueError, match=r"seq_length=128.*192 tokens.*seq_length=191"):
        create_dataset(dst, 4, seq_length=128)


def test_int64_variable_shape_file_is_cast(tmp_path):
    path = write_rows(tmp_path / "i64.mindrecord", 6, dtype="int64", shape=[-1])
    out = batches(create_dataset(path, 3, seq_length=SEQ, shuffle=False))
    assert [ids.dtype for ids, _ in out] == [np.int32, np.int32]
    assert [lab.dtype for _, lab in out] == [np.int32, np.int32]
    assert row_ids(out) == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="seq_length=4"):
        create_dataset(path, 3, seq_length=4)


def test_errors(tmp_path, rows16):
    missing = str(tmp_path / "missing.mindrecord")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        create_dataset(missing, 2)
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        dataset_num_rows(missing)
    garbage = tmp_path / "garbage.mindrecord"
    garbage.write_bytes(b"not a mindrecord at all" * 10)
    with pytest.raises(ValueError, match="garbage.mindrecord.*not a readable MindRecord"):
        create_dataset(str(garbage), 2)
    with pytest.raises(ValueError, match="not a readable MindRecord"):
        dataset_num_rows(str(garbage))
    with pytest.raises(ValueError, match="directory"):
        create_dataset(str(tmp_path), 2)
    other = write_rows(tmp_path / "other.mindrecord", 4, columns=("tokens", "labels"))
    with pytest.raises(ValueError, match=r"\['input_ids'\].*\['labels', 'tokens'\]"):
        create_dataset(other, 2)
    with pytest.raises(ValueError, match=r"16 rows.*rank_size=4.*4 rows.*batch_size=5.*worker count larger than the data"):
        create_dataset(rows16, 5, rank_size=4, rank_id=1)
    with pytest.raises(ValueError, match=r"16 rows.*rank_size=1.*batch_size=17"):
        create_dataset(rows16, 17)
    with pytest.raises(ValueError, match=r"seq_length=9.*9 tokens.*seq_length=8"):
        create_dataset(rows16, 2, seq_length=9)
    with pytest.raises(ValueError, match=r"rank_id.*\[0, rank_size=2\).*2"):
        create_dataset(rows16, 2, rank_id=2, rank_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        create_dataset(rows16, 0)
    with pytest.raises(TypeError, match="batch_size"):
        create_dataset(rows16, 2.0)
    with pytest.raises(TypeError, match="shuffle"):
        create_dataset(rows16, 2, shuffle=1)
    with pytest.raises(ValueError, match="seed"):
        create_dataset(rows16, 2, seed=-1)
    with pytest.raises(ValueError, match="repeat"):
        create_dataset(rows16, 2, repeat=0)
    assert sorted(os.listdir(tmp_path)) == ["garbage.mindrecord", "other.mindrecord", "other.mindrecord.db"]


@pytest.mark.parametrize("shuffle", [False, True])
def test_keep_remainder_batches_per_epoch(rows16, rows17, shuffle):
    """drop_remainder=False: each epoch ends on its own short batch; ranks yield equal batch counts."""
    kw = dict(shuffle=shuffle, seed=11, repeat=2, drop_remainder=False)
    one = row_ids(batches(create_dataset(rows17, 5, **kw)))
    assert [len(b) for b in one] == [5, 5, 5, 2] * 2
    for e in range(2):
        assert sorted(sum(one[4 * e:4 * e + 4], [])) == list(range(17))
    # 17 rows, 2 ranks: 8 rows each per epoch, one row left out per epoch
    ranks = [row_ids(batches(create_dataset(rows17, 3, rank_id=r, rank_size=2, **kw))) for r in range(2)]
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]] == [3, 3, 2] * 2
    # 16 rows (a multiple of R): the global-batch relation holds, short batches included
    glob = row_ids(batches(create_dataset(rows16, 6, **kw)))
    ranks = [row_ids(batches(create_dataset(rows16, 3, rank_id=r, rank_size=2, **kw))) for r in range(2)]
    assert [len(b) for b in glob] == [6, 6, 4] * 2
    for t, rows in enumerate(glob):
        assert rows[0::2] == ranks[0][t] and rows[1::2] == ranks[1][t]
