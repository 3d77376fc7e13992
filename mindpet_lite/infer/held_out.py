"""What the model now generates for the held-out data: the prompts of the eval MindRecord, answered greedily.

After training (``predict_after_train: True`` with an ``eval_dataset``; the demo config sets it), the job
calls :func:`predict_held_out` on rank 0 with the trained network: every held-out row's prompt is
recovered from the MindRecord (``input_ids`` up to the first label token, ``labels`` ``!= ignore`` the
reference answer), the prompts are answered in batches through ``models.generation.generate`` (greedy,
with the KV cache when ``model_config.use_past``), and one JSON line a row is written to
``<output_dir>/predictions.jsonl``: ``prompt``, ``output``, ``reference``, ``exact``, ``tokens``,
``seconds``.

Each row may generate as many tokens as the longest reference answer (the eos included) and stops at
eos. ``exact`` is "the first ``len(reference)`` new tokens are the reference tokens": under greedy
decoding this is the row-wise criterion of the teacher-forced evaluation (every answer token the
argmax given the reference prefix), so the share of exact rows is its ``exact_match``.
"""
import os
import time

import numpy as np
from mindspore.mindrecord import FileReader

from mindpet_lite import _checks, _files
from mindpet_lite.data import load_tokenizer
from mindpet_lite.infer.predict import PREDICTIONS_FILE, tokenizer_spec, generation_settings, write_predictions
from mindpet_lite.models.generation import generate

__all__ = ["held_out_examples", "predict_held_out", "answer_held_out",
           "check_held_out_run"]


def check_held_out_run(cfg):
    """Before training: ``predict_after_train`` needs the built-in Llama, and predictions.jsonl must not
    be one of the run's inputs. Returns the path it will be written to."""
    if cfg.backend != "builtin":
        raise ValueError("predict_after_train needs the built-in Llama (backend 'builtin': model.arch.type "
                         f"LlamaForCausalLM without mindformers), got backend {cfg.backend!r}; set it False")
    path = os.path.join(cfg.output_dir, PREDICTIONS_FILE)
    inputs = [p for p in (cfg.load_checkpoint, cfg.eval_dataset.dataset_dir) if p]
    _files.check_new_output(path, inputs, overwrite=True, what="predictions")
    return path


def answer_held_out(cfg, net):
    """The after-training step of a RunConfig with ``eval_dataset``: every held-out row answered by
    ``net`` (:func:`predict_held_out`, ``eval_dataset.batch_size`` rows a batch), written to
    ``<output_dir>/predictions.jsonl``. Returns ``{"predictions", "rows", "exact_match", "seconds",
    "records"}`` (``seconds``: the whole step, the graphs' compilation included)."""
    began = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_spec(cfg))
    settings = generation_settings(cfg.model_config, tokenizer, net.model.max_length, cfg.seed)
    ignore = cfg.llama_config.ignore_token_id if cfg.llama_config is not None else -100
    examples = held_out_examples(cfg.eval_dataset.dataset_dir, ignore)
    records = predict_held_out(net, tokenizer, settings, examples, cfg.eval_dataset.batch_size or cfg.batch_size)
    path = write_predictions(records, os.path.join(cfg.output_dir, PREDICTIONS_FILE))
    exact = sum(r["exact"] for r in records)
    return {"predictions": path, "rows": len(records), "exact_match": exact / len(records),
            "seconds": round(time.perf_counter() - began, 2), "records": records}


def held_out_examples(path, ignore_index=-100):
    """``[(prompt_ids, answer_ids)]`` of the MindRecord at ``path``, in file order: the prompt is
    ``input_ids`` before the first label token (``labels != ignore_index``), the answer the label
    tokens. A row without label tokens is a ValueError naming it."""
    reader = FileReader(path, num_consumer=1, columns=["input_ids", "labels"])
    examples = []
    try:
        for index, row in enumerate(reader.get_next()):
            ids = np.asarray(row["input_ids"]).reshape(-1)
            labels = np.asarray(row["labels"]).reshape(-1)
            keep = np.flatnonzero(labels != ignore_index)
            if keep.size == 0:
                raise ValueError(f"{path}: held-out row {index} has no label token (labels all "
                                 f"{ignore_index}): no answer to generate")
            first = int(keep[0])
            if first == 0:
                raise ValueError(f"{path}: held-out row {index} has a label on its first token: no prompt")
            examples.append(([int(t) for t in ids[:first]], [int(t) for t in labels[keep]]))
    finally:
        reader.close()
    return examples


def predict_held_out(net, tokenizer, settings, examples, batch_size=64):
    """One record a held-out example (see the module docstring), greedy, ``batch_size`` rows a call of
    ``generate``. ``settings``: ``infer.generation_settings``' mapping (``use_past``, ``eos_token_id``,
    ``pad_token_id`` are used; sampling keys are not: the answers are greedy)."""
    _checks.check_positive_int("batch_size", batch_size)
    eos = settings["eos_token_id"]
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
    budget = max(len(answer) for _, answer in examples)
    capacity = net.model.max_length
    records = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        prompts = [prompt for prompt, _ in batch]
        began = time.perf_counter()
        sequences = generate(net, prompts, [min(budget, capacity - len(p)) for p in prompts],
                             eos_token_id=eos, pad_token_id=settings["pad_token_id"],
                             use_past=settings["use_past"])
        seconds = round(time.perf_counter() - began, 4)
        for (prompt, answer), seq in zip(batch, sequences):
            new = seq[len(prompt):]
            shown = [t for t in new if t not in eos_ids]
            records.append({"prompt": tokenizer.decode(_without(prompt, tokenizer)),
                            "output": tokenizer.decode(shown),
                            "reference": tokenizer.decode([t for t in answer if t not in eos_ids]),
                            "exact": new[:len(answer)] == answer, "tokens": new, "seconds": seconds})
    return records


def _without(ids, tokenizer):
    """Token ids without the bos the converter put first."""
    bos = getattr(tokenizer, "bos_id", None)
    return ids[1:] if ids and bos is not None and ids[0] == bos else ids
