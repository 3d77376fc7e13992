"""Builders of the tiny run the train tests share: data, a base checkpoint, the flags.

Every row of the default tiny data has the same number of label tokens (a 4-letter answer + eos);
``make_data(..., uneven=True)`` makes answers of 1 to 4 letters (2 to 5 label tokens a row), the case
where a mean of per-worker / per-micro-batch means is not the global batch's loss.
"""
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TINY_YAML = os.path.join(HERE, "tiny_test.yaml")
TEMPLATE = {"prompt_input": "{instruction} {input} =", "prompt_no_input": "{instruction} ="}
MODEL = dict(seq_length=15, hidden_size=32, num_layers=2, num_heads=4, vocab_size=260, intermediate_size=64)


def make_data(folder, rows=32, seed=0, name="train", uneven=False):
    """A MindRecord of `rows` 'rev abcd =dcba' examples (16 tokens a row: seq_length 15); with
    `uneven`, words of 1 to 4 letters (padded rows, label counts 2 to 5)."""
    from mindpet_lite.data import convert_alpaca

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnop")
    records = []
    for _ in range(rows):
        word = "".join(rng.choice(letters, int(rng.integers(1, 5)) if uneven else 4))
        records.append({"instruction": "rev", "input": word, "output": word[::-1]})
    src = os.path.join(folder, f"{name}.json")
    with open(src, "w", encoding="utf-8") as f:
        json.dump(records, f)
    dst = os.path.join(folder, f"{name}.mindrecord")
    convert_alpaca(src, dst, "byte", MODEL["seq_length"], template=TEMPLATE, overwrite=True)
    return dst


def make_base(path, seed=0, **changes):
    """Save a randomly initialised built-in Llama (the tiny shape, with `changes`) as a checkpoint."""
    import mindspore as ms
    from mindpet_lite.models.llama import LlamaConfig, LlamaForCausalLM

    ms.set_seed(seed)
    net = LlamaForCausalLM(LlamaConfig.from_dict({**MODEL, **changes}))
    ms.save_checkpoint(net, path)
    return path


def flags(base, data, out, *extra):
    return ["--config", TINY_YAML, "--load_checkpoint", base, "--train_dataset_dir", data,
            "--output_dir", out, *extra]
