"""Tokenizers: a built-in byte-level one (no download) and a SentencePiece wrapper.

Both expose the same small interface, which is all the rest of the toolkit relies on::

    encode(text, add_bos=False, add_eos=False) -> list[int]
    decode(ids) -> str            # special tokens are skipped
    vocab_size, pad_id, bos_id, eos_id, unk_id

``load_tokenizer('byte')`` gives the byte tokenizer, ``load_tokenizer('path/tokenizer.model')`` a
SentencePiece one.
"""
import logging
import os

from mindpet_lite._checks import describe, is_int

logger = logging.getLogger(__name__)

__all__ = ["ByteTokenizer", "SentencePieceTokenizer", "load_tokenizer"]


def _as_id_list(name, ids, vocab_size):
    """ids (a list, tuple or numpy array of ints) as a list of python ints in [0, vocab_size)."""
    if hasattr(ids, "tolist"):  # numpy array or mindspore Tensor converted by the caller
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)):
        raise TypeError(f"{name} must be a list of ints, got {describe(ids)}")
    out = []
    for i in ids:
        if not is_int(i):
            raise TypeError(f"{name} must be a list of ints, got item {describe(i)}")
        i = int(i)
        if not 0 <= i < vocab_size:
            raise ValueError(f"{name}: token id {i} is outside the vocabulary [0, {vocab_size})")
        out.append(i)
    return out


def _check_text(text):
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {describe(text)}")


class ByteTokenizer:
    """Byte-level tokenizer: every UTF-8 byte is one token. Needs no file; meant for CPU demos.

    Token-id layout (specials first, as in Llama/SentencePiece, so that padding is id 0)::

        0 = pad, 1 = bos, 2 = eos, 3 = unk (never produced), 4 + b = byte b (b in 0..255)

    so ``vocab_size == 260``. ``decode`` skips the four special ids and decodes the bytes with
    ``errors='replace'`` (a truncated multi-byte character becomes U+FFFD).
    """

    PAD_ID = 0
    BOS_ID = 1
    EOS_ID = 2
    UNK_ID = 3
    OFFSET = 4

    @property
    def vocab_size(self):
        return self.OFFSET + 256

    @property
    def pad_id(self):
        return self.PAD_ID

    @property
    def bos_id(self):
        return self.BOS_ID

    @property
    def eos_id(self):
        return self.EOS_ID

    @property
    def unk_id(self):
        return self.UNK_ID

    def encode(self, text, add_bos=False, add_eos=False):
        """Token ids of `text`: bos (if asked), one id per UTF-8 byte, eos (if asked)."""
        _check_text(text)
        ids = [self.BOS_ID] if add_bos else []
        ids.extend(b + self.OFFSET for b in text.encode("utf-8"))
        if add_eos:
            ids.append(self.EOS_ID)
        return ids

    def decode(self, ids):
        """Text of `ids`; special ids are skipped, invalid UTF-8 is replaced."""
        ids = _as_id_list("ids", ids, self.vocab_size)
        data = bytes(i - self.OFFSET for i in ids if i >= self.OFFSET)
        return data.decode("utf-8", errors="replace")

    def __repr__(self):
        return "ByteTokenizer(vocab_size=260, pad_id=0, bos_id=1, eos_id=2)"


class SentencePieceTokenizer:
    """A SentencePiece model file (e.g. Llama's ``tokenizer.model``) behind the same interface.

    ``bos_id``/``eos_id``/``unk_id`` are the model's own. SentencePiece models usually have no pad
    piece (``pad_id() == -1``); then ``pad_id`` falls back to ``unk_id`` (MindFormers' Llama
    configs pad with id 0, which is ``<unk>``). Padding is masked by position in the labels, so the
    id used for it does not matter for the loss.

    Raises:
        FileNotFoundError: `model_path` does not exist.
        ImportError: the ``sentencepiece`` package is not installed.
        ValueError: the file is not a SentencePiece model.
    """

    def __init__(self, model_path):
        if not isinstance(model_path, (str, os.PathLike)):
            raise TypeError(f"model_path must be a path to a SentencePiece .model file, got {describe(model_path)}")
        path = os.fspath(model_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"SentencePiece model file not found: {path}")
        try:
            import sentencepiece  # pylint: disable=import-outside-toplevel
        except ImportError as err:
            raise ImportError(
                "SentencePieceTokenizer needs the 'sentencepiece' package: pip install sentencepiece "
                "(or use the built-in tokenizer 'byte')") from err
        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.Load(path)
        except (OSError, RuntimeError) as err:
            raise ValueError(f"{path} is not a SentencePiece model: {err}") from err
        self._sp = processor
        self.model_path = path
        self._vocab_size = int(processor.get_piece_size())
        self._unk_id = int(processor.unk_id())
        self._bos_id = int(processor.bos_id())
        self._eos_id = int(processor.eos_id())
        pad = int(processor.pad_id())
        self._pad_id = pad if pad >= 0 else self._unk_id
        self._skip = {i for i in (self._pad_id, self._bos_id, self._eos_id) if i >= 0}
        logger.debug("loaded SentencePiece model %s: vocab_size=%d pad=%d bos=%d eos=%d",
                     path, self._vocab_size, self._pad_id, self._bos_id, self._eos_id)

    @property
    def vocab_size(self):
        return self._vocab_size

    @property
    def pad_id(self):
        return self._pad_id

    @property
    def bos_id(self):
        return self._bos_id

    @property
    def eos_id(self):
        return self._eos_id

    @property
    def unk_id(self):
        return self._unk_id

    def encode(self, text, add_bos=False, add_eos=False):
        """Token ids of `text`, with bos / eos added if asked (ValueError if the model has none)."""
        _check_text(text)
        if add_bos and self._bos_id < 0:
            raise ValueError(f"add_bos=True but the SentencePiece model {self.model_path} has no bos piece")
        if add_eos and self._eos_id < 0:
            raise ValueError(f"add_eos=True but the SentencePiece model {self.model_path} has no eos piece")
        ids = [int(i) for i in self._sp.encode(text, out_type=int)]
        if add_bos:
            ids.insert(0, self._bos_id)
        if add_eos:
            ids.append(self._eos_id)
        return ids

    def decode(self, ids):
        """Text of `ids`; pad, bos and eos ids are skipped."""
        ids = _as_id_list("ids", ids, self._vocab_size)
        return self._sp.decode([i for i in ids if i not in self._skip])

    def __repr__(self):
        return (f"SentencePieceTokenizer({self.model_path!r}, vocab_size={self._vocab_size}, "
                f"pad_id={self._pad_id}, bos_id={self._bos_id}, eos_id={self._eos_id})")


def load_tokenizer(spec):
    """A tokenizer from `spec`.

    Args:
        spec: ``'byte'`` for :class:`ByteTokenizer`; a path (str or PathLike) ending in ``.model``
            for :class:`SentencePieceTokenizer`; an already built tokenizer of either class is
            returned as is.

    Raises:
        ValueError: any other value (the message names the value and what is allowed).
        FileNotFoundError: a ``.model`` path that does not exist.
    """
    if isinstance(spec, (ByteTokenizer, SentencePieceTokenizer)):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text == "byte":
            return ByteTokenizer()
        if isinstance(text, str) and text.endswith(".model"):
            return SentencePieceTokenizer(text)
    raise ValueError(
        f"tokenizer must be 'byte' or a path to a SentencePiece .model file, got {describe(spec)}")
