"""Tokenizers: byte layout and round trips, SentencePiece wrapper on a model trained here, load_tokenizer."""
import os
import pathlib
import re

import numpy as np
import pytest

from mindpet_lite.data import ByteTokenizer, SentencePieceTokenizer, load_tokenizer

TEXT = "Grüße, naïve café — 日本語 ✓ 🙂 plain ASCII too"


# ---------------------------------------------------------------- byte tokenizer
def test_byte_layout_specials_first():
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 260
    # byte b is id b + 4, checked from the raw UTF-8 bytes
    assert tok.encode("A") == [ord("A") + 4]
    assert tok.encode("é") == [0xC3 + 4, 0xA9 + 4]
    assert tok.encode("") == []


def test_byte_encode_matches_utf8_and_adds_specials():
    tok = ByteTokenizer()
    raw = list(TEXT.encode("utf-8"))
    assert tok.encode(TEXT) == [b + 4 for b in raw]
    assert tok.encode(TEXT, add_bos=True, add_eos=True) == [1] + [b + 4 for b in raw] + [2]
    assert len(tok.encode(TEXT)) > len(TEXT)  # non-ASCII takes several bytes
    assert all(4 <= i < 260 for i in tok.encode(TEXT))


def test_byte_round_trip_non_ascii():
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.decode(tok.encode(TEXT, add_bos=True, add_eos=True)) == TEXT


def test_byte_decode_skips_specials_and_takes_arrays():
    tok = ByteTokenizer()
    ids = tok.encode("ab")
    assert tok.decode([1, ids[0], 0, 3, ids[1], 2, 0, 0]) == "ab"
    assert tok.decode(np.array([1] + tok.encode("é"), dtype=np.int32)) == "é"


def test_byte_decode_replaces_broken_utf8():
    tok = ByteTokenizer()
    ids = tok.encode("é")[:1] + tok.encode("x")
    assert tok.decode(ids) == "\ufffdx"


def test_byte_errors():
    tok = ByteTokenizer()
    with pytest.raises(TypeError, match="text must be a string"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="260"):
        tok.decode([5, 260])
    with pytest.raises(ValueError, match="-100"):
        tok.decode([-100])
    with pytest.raises(TypeError):
        tok.decode([1.5])


# ---------------------------------------------------------------- sentencepiece
def test_sentencepiece_round_trip_and_ids(sp_models):
    tok = SentencePieceTokenizer(sp_models["nopad"])
    assert tok.vocab_size == 100
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)  # SentencePiece defaults
    assert tok.pad_id == tok.unk_id  # no pad piece: falls back to unk
    text = "the lora adapter of the model and data"
    ids = tok.encode(text)
    assert ids and all(3 <= i < 100 for i in ids)
    assert tok.decode(ids) == text
    full = tok.encode(text, add_bos=True, add_eos=True)
    assert full == [1] + ids + [2]
    assert tok.decode(full + [tok.pad_id, tok.pad_id]) == text
    assert tok.decode(np.array(full)) == text
    with pytest.raises(ValueError, match="100"):
        tok.decode([100])


def test_sentencepiece_with_pad_piece(sp_models):
    tok = SentencePieceTokenizer(sp_models["pad3"])
    assert tok.pad_id == 3
    ids = tok.encode("alpha beta", add_bos=True)
    assert tok.decode(ids + [3, 3]) == "alpha beta"


def test_sentencepiece_missing_and_bad_file(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.model"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        SentencePieceTokenizer(missing)
    pytest.importorskip("sentencepiece")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError, match="bad.model"):
        SentencePieceTokenizer(bad)


# ---------------------------------------------------------------- load_tokenizer
def test_load_tokenizer_byte_and_model(sp_models):
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    tok = load_tokenizer(sp_models["nopad"])
    assert isinstance(tok, SentencePieceTokenizer)
    assert isinstance(load_tokenizer(pathlib.Path(sp_models["nopad"])), SentencePieceTokenizer)
    assert load_tokenizer(tok) is tok


def test_load_tokenizer_rejects_other_values(tmp_path):
    for bad in ("gpt2", "Byte", "", str(tmp_path / "vocab.json"), 42, None):
        with pytest.raises(ValueError) as info:
            load_tokenizer(bad)
        assert repr(bad) in str(info.value)
        assert "'byte'" in str(info.value) and ".model" in str(info.value)
    missing = os.path.join(str(tmp_path), "missing.model")
    with pytest.raises(FileNotFoundError, match="missing.model"):
        load_tokenizer(missing)
