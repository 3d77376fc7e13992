"""convert_alpaca: rows read back with FileReader and checked against an independent recomputation."""
import json
import os
import random
import re

import numpy as np
import pytest
from mindspore.mindrecord import FileReader

from mindpet_lite.data import ByteTokenizer, convert_alpaca
from mindpet_lite.data.alpaca import ALPACA_TEMPLATE

# The public Alpaca prompt, spelled out here independently of the module under test.
HEAD_IN = ("Below is an instruction that describes a task, paired with an input that provides further "
           "context. Write a response that appropriately completes the request.\n\n")
HEAD_NO = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"


def expected_prompt(rec):
    if rec.get("input"):
        return f"{HEAD_IN}### Instruction:\n{rec['instruction']}\n\n### Input:\n{rec['input']}\n\n### Response:\n"
    return f"{HEAD_NO}### Instruction:\n{rec['instruction']}\n\n### Response:\n"


def byte_ids(text):
    """Byte tokenizer ids computed from the layout (pad 0, bos 1, eos 2, byte b -> b + 4)."""
    return [b + 4 for b in text.encode("utf-8")]


def expected_row(rec, length):
    """(input_ids, labels, truncated) or None, recomputed from scratch for the byte tokenizer."""
    prompt = [1] + byte_ids(expected_prompt(rec))
    response = byte_ids(rec["output"]) + [2]
    if len(prompt) >= length:
        return None
    ids = (prompt + response)[:length]
    n_resp = len(ids) - len(prompt)
    ids = ids + [0] * (length - len(ids))
    labels = [-100] * len(prompt) + ids[len(prompt):len(prompt) + n_resp] + [-100] * (length - len(prompt) - n_resp)
    return ids, labels, len(prompt) + len(response) > length


def read_rows(path):
    reader = FileReader(path, num_consumer=1)
    try:
        schema = reader.schema()
        rows = [(np.asarray(r["input_ids"]), np.asarray(r["labels"])) for r in reader.get_next()]
    finally:
        reader.close()
    return schema, rows


def make_records(n, seed=0):
    rng = random.Random(seed)
    words = ["lora", "rank", "naïve", "日本", "merge", "adapter", "tensor", "🙂", "data"]
    recs = []
    for i in range(n):
        rec = {"instruction": " ".join(rng.choice(words) for _ in range(rng.randint(1, 6))),
               "output": " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))}
        kind = i % 4
        if kind == 1:
            rec["input"] = " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
        elif kind == 2:
            rec["input"] = ""
        elif kind == 3:
            rec["input"] = None
        recs.append(rec)
    return recs


def write_src(path, records, fmt):
    with open(path, "w", encoding="utf-8") as f:
        if fmt == "json":
            json.dump(records, f, ensure_ascii=False, indent=1)
        else:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.write("\n")  # blank lines are ignored
    return str(path)


def leftovers(folder, keep=()):
    return sorted(set(os.listdir(folder)) - set(keep))


def test_module_template_is_the_alpaca_prompt():
    rec_in = {"instruction": "I", "input": "X", "output": ""}
    rec_no = {"instruction": "I", "output": ""}
    assert ALPACA_TEMPLATE["prompt_input"].format(instruction="I", input="X") == expected_prompt(rec_in)
    assert ALPACA_TEMPLATE["prompt_no_input"].format(instruction="I") == expected_prompt(rec_no)


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_convert_rows_match_recomputation(tmp_path, fmt):
    records = make_records(40)
    src = write_src(tmp_path / f"src.{fmt}", records, fmt)
    dst = str(tmp_path / "out" / "train.mindrecord")
    seq_length = 255
    stats = convert_alpaca(src, dst, ByteTokenizer(), seq_length)

    expected = [expected_row(r, seq_length + 1) for r in records]
    kept = [e for e in expected if e is not None]
    assert stats["records"] == 40
    assert stats["written"] == len(kept)
    assert stats["skipped"] == expected.count(None)
    assert stats["truncated"] == sum(e[2] for e in kept)
    assert 0 < stats["truncated"] < len(kept)  # the data exercises both cases
    assert stats["label_tokens"] == sum(sum(1 for v in e[1] if v != -100) for e in kept)

    assert sorted(os.listdir(tmp_path / "out")) == ["train.mindrecord", "train.mindrecord.db"]
    schema, rows = read_rows(dst)
    assert set(schema) == {"input_ids", "labels"}
    assert schema["input_ids"]["type"] == "int32" and schema["labels"]["type"] == "int32"
    assert len(rows) == len(kept)
    tok = ByteTokenizer()
    for (ids, labels), (exp_ids, exp_labels, _) in zip(rows, kept):
        assert ids.dtype == np.int32 and labels.dtype == np.int32
        assert ids.shape == (seq_length + 1,) and labels.shape == (seq_length + 1,)
        assert ids.tolist() == exp_ids
        assert labels.tolist() == exp_labels
        # token by token: a label is either -100 or the input id at the same position
        for k, (tid, lab) in enumerate(zip(ids.tolist(), labels.tolist())):
            assert lab == -100 or lab == tid, k
        assert ids[0] == 1
    # decoding the labelled part gives the output text back (when not truncated)
    first_full = next(i for i, e in enumerate(kept) if not e[2])
    ids, labels = rows[first_full]
    resp = [int(t) for t in labels if t != -100]
    assert resp[-1] == 2
    assert tok.decode(resp) == [r for r, e in zip(records, expected) if e is not None][first_full]["output"]


def test_truncation_and_skip_counts(tmp_path):
    head = len(byte_ids(expected_prompt({"instruction": ""}))) + 1  # bos + template without text
    p = head + 20  # a prompt length used below
    seq_length = p + 40
    length = seq_length + 1

    def rec(prompt_len, out_len):
        """A record whose prompt has prompt_len tokens and response out_len + 1 (with eos)."""
        assert prompt_len >= head
        return {"instruction": "i" * (prompt_len - head), "output": "o" * out_len}

    records = [
        rec(p, 10),                   # fits with padding
        rec(p, length - p - 1),       # fits exactly: prompt + response + eos == length
        rec(p, length - p),           # one token too long: eos cut -> truncated
        rec(length - 1, 5),           # room for one response token -> truncated, written
        rec(length, 0),               # prompt fills the row -> skipped
        rec(length + 30, 3),          # prompt longer than the row -> skipped
    ]
    src = write_src(tmp_path / "src.json", records, "json")
    dst = str(tmp_path / "t.mindrecord")
    stats = convert_alpaca(src, dst, ByteTokenizer(), seq_length)
    assert (stats["written"], stats["skipped"], stats["truncated"]) == (4, 2, 2)
    assert stats["label_tokens"] == 11 + (length - p) + (length - p) + 1
    _, rows = read_rows(dst)
    ids, labels = rows[0]
    assert (labels != -100).sum() == 11 and labels[p + 10] == 2 and ids[p + 11] == 0 and labels[p + 11] == -100
    assert (labels[:p] == -100).all() and (ids[p + 11:] == 0).all()
    ids, labels = rows[1]
    assert ids[-1] == 2 and labels[-1] == 2 and 0 not in ids.tolist()
    ids, labels = rows[2]
    assert 2 not in ids.tolist() and labels[-1] == ids[-1] == ord("o") + 4
    ids, labels = rows[3]
    assert (labels != -100).sum() == 1 and labels[-1] == ord("o") + 4
    assert (labels[:-1] == -100).all()


def test_custom_template_and_overwrite(tmp_path):
    records = [{"instruction": "add", "input": "1 2", "output": "3"}, {"instruction": "hi", "output": "yo"}]
    src = write_src(tmp_path / "src.jsonl", records, "jsonl")
    dst = str(tmp_path / "c.mindrecord")
    template = {"prompt_input": "Q: {instruction} [{input}]\nA: ", "prompt_no_input": "Q: {instruction}\nA: "}
    convert_alpaca(src, dst, "byte", 31, template=template)
    _, rows = read_rows(dst)
    assert rows[0][0].tolist()[:1 + len("Q: add [1 2]\nA: ") + 2] == [1] + byte_ids("Q: add [1 2]\nA: 3") + [2]
    assert rows[1][1].tolist()[:1 + len("Q: hi\nA: ") + 3] == [-100] * (1 + len("Q: hi\nA: ")) + byte_ids("yo") + [2]
    with pytest.raises(FileExistsError, match=re.escape(dst)):
        convert_alpaca(src, dst, "byte", 31)
    stats = convert_alpaca(src, dst, "byte", 63, template=template, overwrite=True)
    assert stats["written"] == 2
    schema, rows = read_rows(dst)
    assert schema["input_ids"]["shape"] == [64] and rows[0][0].shape == (64,)
    assert leftovers(tmp_path) == ["c.mindrecord", "c.mindrecord.db", "src.jsonl"]


BAD_RECORDS = [
    ([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}, {"instruction": "e"}],
     r"record 2.*'output'"),
    ([{"output": "b"}], r"record 0.*'instruction'"),
    ([{"instruction": "a", "output": "b"}, {"instruction": 3, "output": "d"}], r"record 1.*'instruction'"),
    ([{"instruction": "a", "output": ["b"]}], r"record 0.*'output'"),
    ([{"instruction": "a", "input": 7, "output": "b"}], r"record 0.*'input'"),
    ([{"instruction": "a", "output": "b"}, "not a dict"], r"record 1"),
    ([], r"no records"),
]


@pytest.mark.parametrize("records,pattern", BAD_RECORDS)
def test_bad_records_raise_before_writing(tmp_path, records, pattern):
    src = write_src(tmp_path / "src.json", records, "json")
    dst = str(tmp_path / "bad.mindrecord")
    with pytest.raises(ValueError, match=pattern):
        convert_alpaca(src, dst, ByteTokenizer(), 64)
    assert not os.path.exists(dst) and not os.path.exists(dst + ".db")
    assert leftovers(tmp_path) == ["src.json"]


def test_bad_arguments_raise_before_writing(tmp_path):
    records = [{"instruction": "a", "output": "b"}]
    src = write_src(tmp_path / "src.json", records, "json")
    dst = str(tmp_path / "bad.mindrecord")
    missing = str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        convert_alpaca(missing, dst, ByteTokenizer(), 64)
    for bad, exc in ((0, ValueError), (-3, ValueError), (True, TypeError), ("64", TypeError), (8.0, TypeError)):
        with pytest.raises(exc, match="seq_length"):
            convert_alpaca(src, dst, ByteTokenizer(), bad)
    with pytest.raises(ValueError, match="prompt_no_input"):
        convert_alpaca(src, dst, ByteTokenizer(), 64, template={"prompt_input": "{instruction}{input}"})
    with pytest.raises(ValueError, match="name"):
        convert_alpaca(src, dst, ByteTokenizer(), 64,
                       template={"prompt_input": "{instruction}{input}", "prompt_no_input": "{name}"})
    with pytest.raises(ValueError, match="gpt2"):
        convert_alpaca(src, dst, "gpt2", 64)
    # every prompt is too long: nothing to write
    with pytest.raises(ValueError, match="skipped"):
        convert_alpaca(src, dst, ByteTokenizer(), 16)
    (tmp_path / "broken.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(ValueError, match="line 2"):
        convert_alpaca(str(tmp_path / "broken.jsonl"), dst, ByteTokenizer(), 64)
    assert not os.path.exists(dst) and not os.path.exists(dst + ".db")
    assert leftovers(tmp_path) == ["broken.jsonl", "src.json"]


def test_existing_dst_is_kept(tmp_path):
    src = write_src(tmp_path / "src.json", [{"instruction": "a", "output": "b"}], "json")
    dst = tmp_path / "x.mindrecord"
    dst.write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert_alpaca(src, str(dst), ByteTokenizer(), 64)
    assert dst.read_text() == "old" and not os.path.exists(str(dst) + ".db")
    db_only = tmp_path / "y.mindrecord"
    (tmp_path / "y.mindrecord.db").write_text("old index")
    with pytest.raises(FileExistsError, match=r"y\.mindrecord\.db"):
        convert_alpaca(src, str(db_only), ByteTokenizer(), 64)
    assert not db_only.exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, overwrite):
    from mindspore.mindrecord import FileWriter

    src = write_src(tmp_path / "src.json", make_records(5), "json")
    dst = str(tmp_path / "f.mindrecord")
    if overwrite:
        convert_alpaca(src, dst, ByteTokenizer(), 300)
        _, before = read_rows(dst)

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(FileWriter, "commit", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        convert_alpaca(src, dst, ByteTokenizer(), 300, overwrite=overwrite)
    if overwrite:  # the old file is untouched
        assert leftovers(tmp_path) == ["f.mindrecord", "f.mindrecord.db", "src.json"]
        monkeypatch.undo()
        _, after = read_rows(dst)
        assert [r[0].tolist() for r in after] == [r[0].tolist() for r in before]
    else:
        assert leftovers(tmp_path) == ["src.json"]


def test_sentencepiece_tokenizer_conversion(tmp_path, sp_models):
    from mindpet_lite.data import SentencePieceTokenizer

    tok = SentencePieceTokenizer(sp_models["nopad"])
    records = [{"instruction": "the lora model", "input": "alpha beta", "output": "merge the adapter"},
               {"instruction": "train", "output": "data and weight " * 300}]
    src = write_src(tmp_path / "src.json", records, "json")
    dst = str(tmp_path / "sp.mindrecord")
    stats = convert_alpaca(src, dst, sp_models["nopad"], 511)
    assert (stats["written"], stats["skipped"], stats["truncated"]) == (2, 0, 1)
    _, rows = read_rows(dst)
    for rec, (ids, labels) in zip(records, rows):
        prompt = tok.encode(ALPACA_TEMPLATE["prompt_input" if rec.get("input") else "prompt_no_input"].format(
            instruction=rec["instruction"], input=rec.get("input", "")), add_bos=True)
        response = (tok.encode(rec["output"]) + [tok.eos_id])[:512 - len(prompt)]
        n = len(prompt) + len(response)
        assert ids.tolist() == prompt + response + [tok.pad_id] * (512 - n)
        assert labels.tolist() == [-100] * len(prompt) + response + [-100] * (512 - n)
    assert tok.decode([t for t in rows[0][1].tolist() if t != -100]) == "merge the adapter"
