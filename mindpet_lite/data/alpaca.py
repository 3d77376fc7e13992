"""Alpaca-style instruction data (JSON list or JSONL) -> MindRecord for causal-LM fine-tuning.

Each record has ``instruction`` (str), optional ``input`` (str, may be empty or null) and ``output``
(str). One row of the MindRecord file holds two int32 columns of length ``seq_length + 1``
(MindFormers' alpaca mindrecord convention: the model feeds ``input_ids[:-1]`` and scores
``labels[1:]``)::

    input_ids = [bos] prompt tokens | response tokens [eos] | pad_id ...
    labels    = -100 ...            | response tokens  eos  | -100 ...

The prompt is the Alpaca template filled with the record; only response tokens (and the eos) are
trained on. Examples longer than ``seq_length + 1`` keep their prompt and lose the end of their
response; an example whose prompt leaves no room for a single response token is skipped.
"""
import json
import logging
import os
import string

import numpy as np
from mindspore.mindrecord import FileWriter

from mindpet_lite._checks import check_bool, check_positive_int, describe
from mindpet_lite._files import atomic_write, check_new_output
from mindpet_lite.data.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

__all__ = ["convert_alpaca", "ALPACA_TEMPLATE", "IGNORE_INDEX"]

IGNORE_INDEX = -100

# The public Stanford Alpaca prompt, with and without an input field.
ALPACA_TEMPLATE = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"),
    "prompt_no_input": (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"),
}

_SCHEMA_DESC = "mindpet_lite alpaca: input_ids/labels of seq_length+1, labels -100 outside the response"
_WRITE_CHUNK = 1000


def _check_template(template):
    """The template as a dict of two format strings using only {instruction} and {input}."""
    if template is None:
        return dict(ALPACA_TEMPLATE)
    allowed = "None or a dict with string keys 'prompt_input' and 'prompt_no_input'"
    if not isinstance(template, dict) or set(template) != {"prompt_input", "prompt_no_input"}:
        raise ValueError(f"template must be {allowed}, got {describe(template)}")
    for key, text in template.items():
        if not isinstance(text, str):
            raise ValueError(f"template['{key}'] must be a string, got {describe(text)}")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as err:
            raise ValueError(f"template['{key}'] is not a valid format string: {err}") from err
        unknown = fields - {"instruction", "input"}
        if unknown:
            raise ValueError(f"template['{key}'] may use only {{instruction}} and {{input}}, "
                             f"got fields {sorted(unknown)}")
        if "instruction" not in fields:
            raise ValueError(f"template['{key}'] must contain {{instruction}}")
    return dict(template)


def _read_records(path):
    """The list of records of a JSON-list or JSONL file (detected from the first character)."""
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON: {err}") from err
        return records
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {lineno} is not valid JSON (expected a JSON list or "
                             f"one JSON object per line): {err}") from err
    return records


def _check_record(index, record):
    """(instruction, input, output) of one record; ValueError naming the index and the key."""
    if not isinstance(record, dict):
        raise ValueError(f"record {index}: must be a JSON object with 'instruction' and 'output', "
                         f"got {describe(record)}")
    for key in ("instruction", "output"):
        if key not in record:
            raise ValueError(f"record {index}: missing key '{key}' (keys found: {sorted(record)})")
        if not isinstance(record[key], str):
            raise ValueError(f"record {index}: key '{key}' must be a string, got {describe(record[key])}")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise ValueError(f"record {index}: key 'input' must be a string or null, got {describe(extra)}")
    return record["instruction"], extra or "", record["output"]


def _build_row(prompt_ids, response_ids, length, pad_id):
    """(input_ids, labels, truncated) for one example, or None if no response token fits."""
    room = length - len(prompt_ids)
    if room <= 0:
        return None
    truncated = len(response_ids) > room
    response_ids = response_ids[:room]
    n_pad = room - len(response_ids)
    input_ids = np.array(prompt_ids + response_ids + [pad_id] * n_pad, dtype=np.int32)
    labels = np.array([IGNORE_INDEX] * len(prompt_ids) + response_ids + [IGNORE_INDEX] * n_pad,
                      dtype=np.int32)
    return input_ids, labels, truncated


def _write_mindrecord(dst, rows, length):
    """Write rows to ``dst`` and its ``dst.db`` index, both or neither (``_files.atomic_write``)."""
    with atomic_write(dst, companions=(".db",)) as tmp:
        writer = FileWriter(tmp, shard_num=1, overwrite=True)
        schema = {"input_ids": {"type": "int32", "shape": [length]},
                  "labels": {"type": "int32", "shape": [length]}}
        writer.add_schema(schema, _SCHEMA_DESC)
        for start in range(0, len(rows), _WRITE_CHUNK):
            chunk = rows[start:start + _WRITE_CHUNK]
            writer.write_raw_data([{"input_ids": ids, "labels": lab} for ids, lab in chunk])
        writer.commit()


def convert_alpaca(src, dst, tokenizer, seq_length, template=None, overwrite=False):
    """Convert an Alpaca JSON / JSONL file into a MindRecord file of ``input_ids`` and ``labels``.

    Args:
        src: path of a JSON list of records, or of a JSONL file (one record per line).
        dst: path of the MindRecord file to write (its index ``dst + '.db'`` is written beside it).
        tokenizer: a tokenizer object (``encode``, ``pad_id``, ``bos_id``, ``eos_id``) or a spec for
            :func:`~mindpet_lite.data.tokenizer.load_tokenizer` (``'byte'``, a ``.model`` path).
        seq_length: the model's sequence length; each row holds ``seq_length + 1`` tokens.
        template: ``None`` for the Alpaca prompt, or a dict with format strings ``prompt_input``
            and ``prompt_no_input`` using ``{instruction}`` and ``{input}``.
        overwrite: replace an existing ``dst`` (otherwise FileExistsError).

    Returns:
        dict: ``records`` (read), ``written``, ``skipped`` (no response token fits), ``truncated``
        (response cut to fit), ``label_tokens`` (labels other than -100 over all rows),
        ``seq_length`` and ``dst``.

    Raises:
        FileNotFoundError: `src` does not exist.
        FileExistsError: `dst` (or ``dst.db``) exists and `overwrite` is False.
        ValueError: `dst` (or ``dst.db``) is `src`, even with `overwrite`.
        TypeError / ValueError: bad `seq_length`, template or tokenizer; a record that is not an
            object, lacks ``instruction`` / ``output`` or has a non-string value (the message names
            the record index and the key); no example left to write.

    Everything is checked and tokenized before anything is written; the file is written under a
    temporary folder next to `dst` and moved into place, so a failure never leaves a partial `dst`.
    """
    seq_length = check_positive_int("seq_length", seq_length)
    check_bool("overwrite", overwrite)
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"src must be a path, got {describe(src)}")
    if not isinstance(dst, (str, os.PathLike)):
        raise TypeError(f"dst must be a path, got {describe(dst)}")
    src, dst = os.fspath(src), os.fspath(dst)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"alpaca source file not found: {src}")
    if os.path.isdir(dst):
        raise ValueError(f"dst must be a file path, got the directory {dst}")
    for path in (dst, dst + ".db"):  # never the source, an existing one only with overwrite
        check_new_output(path, [src], overwrite, what="dst")
    template = _check_template(template)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    for attr in ("encode", "pad_id", "bos_id", "eos_id"):
        if not hasattr(tokenizer, attr):
            raise TypeError(f"tokenizer must have encode, pad_id, bos_id and eos_id, got {describe(tokenizer)}")

    records = _read_records(src)
    if not isinstance(records, list):
        raise ValueError(f"{src}: expected a JSON list of records, got {type(records).__name__}")
    fields = [_check_record(i, r) for i, r in enumerate(records)]
    if not fields:
        raise ValueError(f"{src} holds no records")

    length = seq_length + 1
    rows, skipped, truncated, label_tokens = [], 0, 0, 0
    for index, (instruction, extra, output) in enumerate(fields):
        key = "prompt_input" if extra else "prompt_no_input"
        prompt = template[key].format(instruction=instruction, input=extra)
        prompt_ids = tokenizer.encode(prompt, add_bos=True)
        response_ids = tokenizer.encode(output, add_eos=True)
        row = _build_row(prompt_ids, response_ids, length, tokenizer.pad_id)
        if row is None:
            skipped += 1
            logger.debug("record %d skipped: prompt of %d tokens leaves no room in %d", index,
                         len(prompt_ids), length)
            continue
        input_ids, labels, cut = row
        if cut:
            truncated += 1
            logger.debug("record %d truncated: %d prompt + %d response tokens > %d", index,
                         len(prompt_ids), len(response_ids), length)
        label_tokens += int(np.count_nonzero(labels != IGNORE_INDEX))
        rows.append((input_ids, labels))
    if not rows:
        raise ValueError(f"{src}: all {len(fields)} records were skipped: no prompt fits in "
                         f"seq_length + 1 = {length} tokens with room for a response token")
    if truncated or skipped:
        logger.warning("%s: %d of %d examples truncated to %d tokens, %d skipped (prompt too long)",
                       src, truncated, len(fields), length, skipped)

    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    _write_mindrecord(dst, rows, length)
    stats = {"records": len(fields), "written": len(rows), "skipped": skipped, "truncated": truncated,
             "label_tokens": label_tokens, "seq_length": seq_length, "dst": dst}
    logger.info("wrote %s: %d examples (%d skipped, %d truncated), %d label tokens",
                dst, len(rows), skipped, truncated, label_tokens)
    return stats
