"""Several adapters in predict mode and `mindpet-lite generate`: `--adapter NAME=PATH` repeated and a
per-row "adapter" field in the predict JSONL give the tokens of the Python API
(LlamaForCausalLM.generate(..., adapter_names=...)); bad names and syntax are exit status 2 before any work."""
import json
import os

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from mindpet_lite.adapters import export_peft, load_adapter, save_adapter
from mindpet_lite.cli import main as cli_main
from mindpet_lite.data import ByteTokenizer
from mindpet_lite.models import LlamaForCausalLM
from mindpet_lite.pet import get_pet_model
from mindpet_lite.run import main as run_main
from mindpet_lite.train import load_base_checkpoint
from tests.train import tiny

PROMPTS = ["rev abcd =", "rev pon =", "rev ab =", "rev hgfe =", "rev ok ="]
TARGETS = {"a": ".*wq|.*wv", "b": ".*w1|.*w3"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny base checkpoint and two adapters of it with disjoint targets (random B: they change the output)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    folder = tmp_path_factory.mktemp("adapters")
    out = {"base": tiny.make_base(str(folder / "base.ckpt"))}
    for i, (name, targets) in enumerate(TARGETS.items()):
        net = LlamaForCausalLM(dict(tiny.MODEL))
        load_base_checkpoint(net, out["base"])
        get_pet_model(net, dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets))
        rng = np.random.default_rng(i)
        for pname, p in net.parameters_and_names():
            if "mindpet_delta_lora_b" in pname:
                p.set_data(Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.5))
        out[name] = str(folder / f"{name}.safetensors")
        save_adapter(net, out[name])
    return out


def _api_tokens(files, adapters, prompts, names):
    """The new tokens of each prompt from the Python API: the base, the adapters loaded side by side
    (("default", path) first, then named), generate(adapter_names=names)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net = LlamaForCausalLM(dict(tiny.MODEL))
    load_base_checkpoint(net, files["base"])
    for name, path in adapters:
        load_adapter(net, path, adapter_name=None if name == "default" else name)
    net.set_train(False)
    tok = ByteTokenizer()
    ids = [tok.encode(p, add_bos=True) for p in prompts]
    seqs = net.generate(ids, [16 - len(i) for i in ids], eos_token_id=tok.eos_id, adapter_names=names)
    out = []
    for prompt_ids, seq in zip(ids, seqs):
        new = seq[len(prompt_ids):]
        out.append(new[:-1] if new and new[-1] == tok.eos_id else new)
    return out


def _predict_argv(files, data, out, *adapters):
    argv = ["--config", tiny.TINY_YAML, "--run_mode", "predict", "--predict_data", data,
            "--load_checkpoint", files["base"], "--output_dir", out, "--predict_batch_size", "5"]
    for entry in adapters:
        argv += ["--adapter", entry]
    return argv


def test_predict_jsonl_rows_pick_their_adapter_in_one_batch(files, tmp_path):
    rows = [{"prompt": PROMPTS[0], "adapter": "a"}, {"prompt": PROMPTS[1], "adapter": "b"},
            {"prompt": PROMPTS[2], "adapter": "__base__"}, {"prompt": PROMPTS[3]}, PROMPTS[4]]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "out")
    assert run_main(_predict_argv(files, str(data), out, f"a={files['a']}", f"b={files['b']}")) == 0
    with open(os.path.join(out, "predictions.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    names = ["a", "b", "__base__", "a", "a"]  # no 'default' given: an absent field runs the first NAME=PATH
    assert [r["adapter"] for r in records] == names
    want = _api_tokens(files, [("a", files["a"]), ("b", files["b"])], PROMPTS, names)
    assert [r["tokens"] for r in records] == want
    assert len({tuple(t) for t in want[:3]}) == 3  # three adapters, three different answers


@pytest.fixture(scope="module")
def dora_file(files, tmp_path_factory):
    """A DoRA adapter of the tiny base on wq / wv (random B and magnitudes: it changes the output)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net = LlamaForCausalLM(dict(tiny.MODEL))
    load_base_checkpoint(net, files["base"])
    get_pet_model(net, dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS["a"], use_dora=True))
    rng = np.random.default_rng(7)
    for pname, p in net.parameters_and_names():
        if "mindpet_delta_lora_b" in pname:
            p.set_data(Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.5))
        elif "mindpet_delta_lora_magnitude" in pname:
            p.set_data(Tensor(p.asnumpy() * (1 + 0.3 * rng.standard_normal(p.shape)).astype(np.float32)))
    path = str(tmp_path_factory.mktemp("dora") / "dora.safetensors")
    save_adapter(net, path)
    return path


def test_predict_rows_of_a_dora_default_and_a_named_adapter(files, dora_file, tmp_path, caplog):
    """A DoRA cell cannot mix adapters in a batch: predict runs the rows in one group an adapter (a
    batch of 5 holding three adapters), in input order, each row with the tokens of a network holding
    only its adapter; generate() with mixed rows on it is refused before any change."""
    rows = [{"prompt": PROMPTS[0]}, {"prompt": PROMPTS[1], "adapter": "b"}, {"prompt": PROMPTS[2], "adapter": "__base__"},
            {"prompt": PROMPTS[3], "adapter": "b"}, {"prompt": PROMPTS[4], "adapter": "default"}]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "out")
    caplog.set_level("INFO", logger="mindpet_lite.infer.predict")
    assert run_main(_predict_argv(files, str(data), out, dora_file, f"b={files['b']}")) == 0
    assert "3 groups of rows, one an adapter (default: 2, b: 2, __base__: 1)" in caplog.text
    with open(os.path.join(out, "predictions.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    names = ["default", "b", "__base__", "b", "default"]
    assert [r["prompt"] for r in records] == PROMPTS and [r["adapter"] for r in records] == names
    alone = {"default": _api_tokens(files, [("default", dora_file)], PROMPTS, None),
             "b": _api_tokens(files, [("default", files["b"])], PROMPTS, None),
             "__base__": _api_tokens(files, [], PROMPTS, None)}
    assert [r["tokens"] for r in records] == [alone[name][i] for i, name in enumerate(names)]
    assert alone["default"] != alone["__base__"] != alone["b"] != alone["default"]  # the three runs differ

    net = LlamaForCausalLM(dict(tiny.MODEL))
    load_base_checkpoint(net, files["base"])
    load_adapter(net, dora_file)
    load_adapter(net, files["b"], adapter_name="b")
    before = [cell.active_adapter for _, cell in net.cells_and_names() if hasattr(cell, "active_adapter")]
    with pytest.raises(ValueError, match=r"adapter_names: 4 LoRA cells are DoRA cells, e.g. .*give every row"):
        net.generate([[1, 2], [3, 4]], 2, adapter_names=["default", "b"])
    assert [cell.active_adapter for _, cell in net.cells_and_names() if hasattr(cell, "active_adapter")] == before


def test_predict_takes_a_peft_directory_as_an_adapter(files, tmp_path):
    peft_dir = str(tmp_path / "peft_b")
    export_peft(files["b"], peft_dir)
    out = str(tmp_path / "out")
    assert run_main(_predict_argv(files, PROMPTS[0], out, f"b={peft_dir}")) == 0
    with open(os.path.join(out, "predictions.jsonl"), encoding="utf-8") as f:
        record = json.loads(f.readline())
    assert record["tokens"] == _api_tokens(files, [("b", files["b"])], PROMPTS[:1], None)[0]
    assert run_main(_predict_argv(files, PROMPTS[0], str(tmp_path / "x"), str(tmp_path))) == 2  # no adapter_config.json


def test_generate_with_two_adapters_runs_the_one_named(files, capsys):
    argv = ["generate", "--config", tiny.TINY_YAML, "--load_checkpoint", files["base"], "--adapter", files["a"],
            "--adapter", f"b={files['b']}", "--prompt", PROMPTS[0], "--use_past", "False"]
    adapters = [("default", files["a"]), ("b", files["b"])]
    tok = ByteTokenizer()
    for name in ("b", None):
        assert cli_main(argv + (["--adapter-name", name] if name else [])) == 0
        printed = capsys.readouterr().out
        want = tok.decode(_api_tokens(files, adapters, PROMPTS[:1], [name or "default"])[0])
        assert printed.startswith(PROMPTS[0] + want + "\n"), (name, printed)


@pytest.mark.parametrize("adapters, rows, message", [
    (["a={a}", "b={b}"], [{"prompt": "x", "adapter": "zz"}], "prompt 0 of input_data: unknown adapter 'zz'"),
    (["a={a}", "a={b}"], ["x"], "adapter name 'a' is given twice"),
    (["{a}", "{b}"], ["x"], "adapter name 'default' is given twice"),
    (["1x={a}"], ["x"], "'1x="),
    (["a="], ["x"], "'a=' has no path after '='"),
    (["a={a}"], [{"prompt": "x", "adapter": 3}], "prompt 0 of input_data: adapter must be an adapter name"),
])
def test_bad_adapters_are_exit_status_2_before_any_work(files, tmp_path, capsys, adapters, rows, message):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "out")
    argv = _predict_argv(files, str(data), out, *(e.format(**files) for e in adapters))
    assert run_main(argv) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(out)  # nothing written, no model built


def test_generate_refuses_an_unknown_adapter_name(files, capsys):
    argv = ["generate", "--config", tiny.TINY_YAML, "--load_checkpoint", files["base"], "--adapter",
            f"a={files['a']}", "--adapter-name", "zz", "--prompt", "x"]
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    assert "--adapter-name: unknown adapter 'zz'" in captured.err and captured.out == ""
