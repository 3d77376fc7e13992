"""predict_after_train: the held-out answers the trained model generates (greedy, KV cache) against an
independent reference, the teacher-forced row-wise exact match computed in numpy from the model's logits
(tests/reference.eval_metrics), row by row."""
import contextlib
import importlib.util
import io
import json
import os

import numpy as np
import pytest

from mindspore import Tensor
from mindspore.mindrecord import FileReader

from mindpet_lite.adapters import load_adapter
from mindpet_lite.infer import held_out_examples
from mindpet_lite.models import LlamaForCausalLM
from mindpet_lite.pet import get_pet_model
from mindpet_lite.run import main as run_main
from mindpet_lite.train import load_base_checkpoint
from tests import reference
from tests.modes import pynative
from tests.train import tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "configs", "tiny_llama")
PET = dict(pet_type="lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=".*wq|.*wk|.*wv|.*wo")
SEQ = 80
HELD_OUT = 64


def _rows(path):
    reader = FileReader(path, num_consumer=1, columns=["input_ids", "labels"])
    rows = [(np.asarray(r["input_ids"]).reshape(-1), np.asarray(r["labels"]).reshape(-1)) for r in reader.get_next()]
    reader.close()
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def _demo_data(folder):
    """The demo's task data (scripts/make_tiny_base.py), built in `folder`; held out: the first
    HELD_OUT rows of its eval set (every row is generated and checked, the demo's 240 would only take
    longer)."""
    from mindpet_lite.data import convert_alpaca
    spec = importlib.util.spec_from_file_location("make_tiny_base", os.path.join(REPO, "scripts", "make_tiny_base.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paths = module.build_data(folder, SEQ, names=("task_train", "task_eval"))
    with open(paths["task_eval"][:-len(".mindrecord")] + ".json", encoding="utf-8") as f:
        rows = json.load(f)[:HELD_OUT]
    src, dst = os.path.join(folder, "held_out.json"), os.path.join(folder, "held_out.mindrecord")
    with open(src, "w", encoding="utf-8") as f:
        json.dump(rows, f)
    convert_alpaca(src, dst, "byte", SEQ, template=module.TEMPLATE, overwrite=True)
    return paths["task_train"], dst


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The demo (its committed base, its task) trained 40 steps: part-way, so that some
    held-out answers come out right and some do not."""
    folder = str(tmp_path_factory.mktemp("held_out"))
    train, held_out = _demo_data(folder)
    base = os.path.join(DEMO, "tiny_llama_base.ckpt")
    out = os.path.join(folder, "run")
    argv = ["--config", os.path.join(DEMO, "lora_cpu.yaml"), "--load_checkpoint", base, "--train_dataset_dir", train,
            "--eval_dataset_dir", held_out, "--output_dir", out, "--epochs", "1", "--max_steps", "40",
            "--predict_after_train", "True"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_main(argv) == 0
    return base, held_out, out, printed.getvalue()


def test_generated_answers_match_the_teacher_forced_rows(run):
    base, data, out, printed = run
    with open(os.path.join(out, "predictions.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    ids, labels = _rows(data)
    assert len(records) == len(ids)

    net = LlamaForCausalLM(dict(hidden_size=128, num_layers=4, num_heads=4, vocab_size=260, intermediate_size=384,
                                seq_length=SEQ, rms_norm_eps=1e-5, pad_token_id=0))
    load_base_checkpoint(net, base)
    get_pet_model(net, PET)
    load_adapter(net, os.path.join(out, "adapter.ckpt"))
    net.set_train(False)
    with pynative():  # the reference forward: no graph compile for its one shape
        logits = net(Tensor(ids[:, :-1].astype(np.int32))).asnumpy()
    row_match = reference.eval_metrics(logits, labels[:, 1:])["row_match"]

    generated = np.array([r["exact"] for r in records])
    assert generated.tolist() == row_match.tolist()
    assert 0 < generated.sum() < len(generated), "the run should answer some rows right and some wrong"
    for r, label_row in zip(records, labels):  # the reference answer is the label tokens, decoded
        answer = bytes(int(t) - 4 for t in label_row if t >= 4).decode()
        assert r["reference"] == answer
        assert r["exact"] == (r["output"] == answer)
    summary = json.load(open(os.path.join(out, "summary.json"), encoding="utf-8"))
    assert summary["after_train"]["exact_match"] == pytest.approx(row_match.mean())
    assert summary["eval_after"]["exact_match"] == pytest.approx(row_match.mean())
    assert "held-out reviews, answered by the trained model" in printed
    first = records[0]
    assert f"{first['prompt']}{first['output']}    [reference: {first['reference']}" in printed


def test_held_out_examples_split_prompt_and_answer(run):
    _, data, _, _ = run
    ids, labels = _rows(data)
    for (prompt, answer), row, label in zip(held_out_examples(data), ids, labels):
        first = int(np.flatnonzero(label != -100)[0])
        assert prompt == row[:first].tolist() and answer == label[label != -100].tolist()
        assert row[first - 1] == ord("=") + 4  # the demo's prompt ends with '='


def test_predict_after_train_needs_eval_data(tmp_path):
    base = tiny.make_base(str(tmp_path / "base.ckpt"))
    data = tiny.make_data(str(tmp_path), rows=8)
    assert run_main(tiny.flags(base, data, str(tmp_path / "out"), "--predict_after_train", "True")) == 2
