"""Predict mode and `mindpet-lite generate`: a tiny run trained for a few steps, then its predictions
against calling generate() directly on a model built by hand (base + LoRA + adapter)."""
import io
import json
import os

import pytest

import mindspore as ms

from mindpet_lite.adapters import load_adapter
from mindpet_lite.cli import main as cli_main
from mindpet_lite.data import ByteTokenizer
from mindpet_lite.infer import generation_settings, read_prompts
from mindpet_lite.infer.predict import TextStreamer
from mindpet_lite.models import LlamaForCausalLM
from mindpet_lite.models.generation import generate
from mindpet_lite.pet import get_pet_model
from mindpet_lite.run import main as run_main
from mindpet_lite.train import load_base_checkpoint
from tests import msrun_jobs
from tests.train import tiny

pytestmark = pytest.mark.xdist_group(msrun_jobs.MSRUN_GROUP)  # one worker for the msrun jobs (tests/conftest.py)

PROMPTS = ["rev abcd =", "rev pon =", "rev ab =", "rev hgfe ="]
PET = dict(pet_type="lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=".*wq|.*wv")


@pytest.fixture(name="trained")
def trained_fixture(predict_trained):
    """(base, adapter) after 3 steps of the tiny run (the session's predict_trained, tests/conftest.py:
    the shared msrun job predicts with it too)."""
    return predict_trained


def _by_hand(base, adapter):
    ms.set_context(mode=ms.GRAPH_MODE)
    net = LlamaForCausalLM(dict(tiny.MODEL))
    load_base_checkpoint(net, base)
    get_pet_model(net, PET)
    load_adapter(net, adapter)
    return net


def _predict_argv(base, adapter, out, data, *extra):
    return ["--config", tiny.TINY_YAML, "--run_mode", "predict", "--predict_data", data, "--load_checkpoint", base,
            "--adapter", adapter, "--output_dir", out, *extra]


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("use_past", ["True", "False"])
def test_predict_writes_jsonl_with_the_tokens_of_generate(trained, tmp_path, capsys, use_past):
    base, adapter = trained
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = str(tmp_path / "out")
    argv = _predict_argv(base, adapter, out, str(prompts), "--predict_batch_size", "3",
                         "--model.model_config.use_past", use_past)
    assert run_main(argv) == 0
    records = _read_jsonl(os.path.join(out, "predictions.jsonl"))
    assert [r["prompt"] for r in records] == PROMPTS
    assert all(set(r) == {"prompt", "output", "tokens", "seconds"} for r in records)
    printed = capsys.readouterr().out
    assert all(r["output"] in printed for r in records) and "predictions.jsonl" in printed

    net = _by_hand(base, adapter)
    tok = ByteTokenizer()
    for record in records:
        ids = tok.encode(record["prompt"], add_bos=True)
        seq = generate(net, ids, 16 - len(ids), eos_token_id=tok.eos_id)[0]
        new = seq[len(ids):]
        if new and new[-1] == tok.eos_id:
            new = new[:-1]
        assert record["tokens"] == new and record["output"] == tok.decode(new)


def test_predict_one_text_prompt_and_base_alone(trained, tmp_path):
    base, adapter = trained
    out = str(tmp_path / "out")
    assert run_main(_predict_argv(base, adapter, out, "rev abcd =")) == 0
    assert [r["prompt"] for r in _read_jsonl(os.path.join(out, "predictions.jsonl"))] == ["rev abcd ="]
    argv = ["--config", tiny.TINY_YAML, "--run_mode", "predict", "--predict_data", "rev abcd =",
            "--load_checkpoint", base, "--output_dir", str(tmp_path / "base_only")]
    assert run_main(argv) == 0


def test_predict_bad_inputs_are_exit_status_2(trained, tmp_path, capsys):
    base, adapter = trained
    out = str(tmp_path / "out")
    argv = ["--config", tiny.TINY_YAML, "--run_mode", "predict", "--load_checkpoint", base, "--output_dir", out]
    assert run_main(argv) == 2
    assert "input_data (--predict_data) must be" in capsys.readouterr().err
    assert run_main(_predict_argv(base, str(tmp_path / "none.ckpt"), out, "x")) == 2
    assert "adapter: no such file" in capsys.readouterr().err
    assert run_main(_predict_argv(base, adapter, out, "x", "--model.model_config.top_p", "1.5")) == 2
    assert "model_config.top_p must be a number > 0 and <= 1, got 1.5" in capsys.readouterr().err


def test_generate_command_streams_and_reports_rates(trained, tmp_path, capsys):
    base, adapter = trained
    argv = ["generate", "--config", tiny.TINY_YAML, "--load_checkpoint", base, "--adapter", adapter,
            "--prompt", "rev abcd ="]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("rev abcd =") and "tokens/s" in printed
    out = str(tmp_path / "out")
    assert run_main(_predict_argv(base, adapter, out, "rev abcd =")) == 0
    record = _read_jsonl(os.path.join(out, "predictions.jsonl"))[0]
    assert printed.startswith("rev abcd =" + record["output"] + "\n")


def test_read_prompts_and_settings(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a b"}) + "\n" + json.dumps("c") + "\n")
    assert read_prompts(str(jsonl)) == ["a b", "c"]
    assert read_prompts("just text") == ["just text"]
    with pytest.raises(ValueError, match="input_data"):
        read_prompts("")
    tok = ByteTokenizer()
    settings = generation_settings({"top_k": 3, "max_decode_length": 99, "do_sample": "True"}, tok, 16)
    assert settings["top_k"] == 3 and settings["max_length"] == 16 and settings["do_sample"] is True
    assert settings["eos_token_id"] == tok.eos_id
    with pytest.raises(ValueError, match="model_config.top_k must be an int >= 0, got -1"):
        generation_settings({"top_k": -1}, tok, 16)


def test_text_streamer_writes_whole_characters():
    tok = ByteTokenizer()
    stream = io.StringIO()
    streamer = TextStreamer(tok, stream, [tok.eos_id])
    for token in tok.encode("hé!") + [tok.eos_id, 0]:
        streamer.put([token])
        assert "\ufffd" not in stream.getvalue()
    streamer.end()
    assert stream.getvalue() == "hé!\n" and streamer.text == "hé!"


# The msrun predict part's prompts: 6 (3 a rank), each row naming its adapter or not: absent and
# "default" run --adapter PATH (the trained fixture's), "uneven" the tiny_uneven_batch4 run's
# (--adapter uneven=PATH), "__base__" the base model; every batch of 2 mixes adapters.
MSRUN_ROWS = [{"prompt": "rev abcd ="}, {"prompt": "rev pon =", "adapter": "uneven"},
              {"prompt": "rev ab =", "adapter": "default"}, {"prompt": "rev hgfe =", "adapter": "__base__"},
              {"prompt": "rev lkji =", "adapter": "uneven"}, {"prompt": "rev m ="}]
MSRUN_ADAPTERS = ["default", "uneven", "default", "__base__", "uneven", "default"]


def _msrun_argv(request, folder, out, *extra):
    """Predict argv of the msrun part and of its single-process reference: the rows above, two adapters."""
    base, adapter = request.getfixturevalue("predict_trained")
    uneven = os.path.join(request.getfixturevalue("tiny_uneven_batch4"), "adapter.ckpt")
    prompts = os.path.join(folder, "prompts.jsonl")
    with open(prompts, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(row) + "\n" for row in MSRUN_ROWS))
    return _predict_argv(base, adapter, out, prompts, "--adapter", f"uneven={uneven}", "--predict_batch_size", "2",
                         *extra)


def _msrun_part(request, folder):
    """The shared msrun job's part (after the training parts: predict resets the parallel context)."""
    dist = os.path.join(folder, "dist")
    os.makedirs(dist)
    with open(os.path.join(dist, "predictions.rank_1.json"), "w", encoding="utf-8") as f:
        f.write("{}")  # stale: from an earlier job
    return _msrun_argv(request, folder, dist, "--use_parallel", "True")


msrun_jobs.register("predict", _msrun_part, order=1)


def test_predict_under_msrun_two_workers_equals_one_process(request, msrun_shared, tmp_path):
    """2 msrun workers (CPU; the shared msrun job's part predict): rank r generates prompts r::2, rank 0
    writes them back in input order; the rows' adapters (two adapters and the base, mixed in each batch)
    give the records of one process."""
    single = str(tmp_path / "single")
    assert run_main(_msrun_argv(request, str(tmp_path), single)) == 0
    dist = os.path.join(msrun_shared.check("predict"), "dist")
    print(f"2 workers (shared job): {msrun_shared.seconds:.1f} s")
    one, two = _read_jsonl(os.path.join(single, "predictions.jsonl")), _read_jsonl(os.path.join(dist, "predictions.jsonl"))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(two) == strip(one) and len(one) == 6
    assert [r["adapter"] for r in one] == MSRUN_ADAPTERS
    assert sorted(os.listdir(dist)) == ["predictions.jsonl"]  # the rank files are gone
    worker1 = msrun_shared.section("predict", 1)  # rank 1 did prompts 1, 3, 5
    assert "rev pon =" in worker1 and "rev m =" in worker1 and "rev lkji" not in worker1
