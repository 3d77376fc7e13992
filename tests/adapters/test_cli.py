"""`mindpet-lite merge / export-peft / import-peft / convert-base` through cli.main."""
import json
import os

import numpy as np

from mindpet_lite.adapters.io import read_adapter, save_adapter
from mindpet_lite.cli import main
from mindpet_lite.models.llama import llama_param_shapes
from mindpet_lite import _files
from mindpet_lite.adapters.metadata import write_adapter_file
from tests.adapters.conftest import TINY_LLAMA, numpy_params, small_net


def test_merge_and_unmerge(tmp_path, capsys):
    net = small_net()
    adapter = str(tmp_path / "a.ckpt")
    save_adapter(net, adapter)
    base = {k: v for k, v in numpy_params(net).items() if "mindpet_delta_lora" not in k}
    _files.write_checkpoint(base, str(tmp_path / "base.safetensors"))
    out = str(tmp_path / "merged.safetensors")
    assert main(["merge", "--base", str(tmp_path / "base.safetensors"), "--adapter", adapter, "--out", out]) == 0
    assert "merged: " in capsys.readouterr().out
    merged, _ = _files.read_checkpoint(out)
    p = numpy_params(net)
    want = base["body.fc1.weight"] + 2.0 * p["body.fc1.mindpet_delta_lora_b"] @ p["body.fc1.mindpet_delta_lora_a"]
    np.testing.assert_allclose(merged["body.fc1.weight"], want, rtol=1e-5, atol=1e-6)
    # --scaling overrides the metadata's 2.0
    assert main(["merge", "--base", str(tmp_path / "base.safetensors"), "--adapter", adapter,
                 "--out", str(tmp_path / "half.ckpt"), "--scaling", "1.0"]) == 0
    half, _ = _files.read_checkpoint(str(tmp_path / "half.ckpt"))
    np.testing.assert_allclose(half["body.fc1.weight"], (want + base["body.fc1.weight"]) / 2, rtol=1e-5, atol=1e-6)
    assert main(["merge", "--base", out, "--adapter", adapter, "--out", str(tmp_path / "back.ckpt"), "--unmerge"]) == 0
    back, _ = _files.read_checkpoint(str(tmp_path / "back.ckpt"))
    np.testing.assert_allclose(back["body.fc1.weight"], base["body.fc1.weight"], atol=1e-6)


def test_merge_errors_leave_output(tmp_path, capsys):
    net = small_net()
    adapter = str(tmp_path / "a.ckpt")
    save_adapter(net, adapter)
    out = str(tmp_path / "out.ckpt")
    with open(out, "wb") as f:
        f.write(b"old")
    _files.write_checkpoint({"other.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "base.ckpt"))
    assert main(["merge", "--base", str(tmp_path / "base.ckpt"), "--adapter", adapter, "--out", out]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["merge", "--base", str(tmp_path / "base.ckpt"), "--adapter", adapter, "--out", out,
                 "--overwrite"]) == 2
    assert "no weight for 2 adapter pairs" in capsys.readouterr().err
    assert main(["merge", "--base", str(tmp_path / "base.ckpt"), "--adapter", adapter, "--out", out,
                 "--format", "safetensors", "--overwrite"]) == 2
    assert "does not match the suffix" in capsys.readouterr().err
    with open(out, "rb") as f:
        assert f.read() == b"old"


def test_peft_and_convert_round_trips(tmp_path, capsys):
    rng = np.random.default_rng(0)
    tensors = {}
    for m, (out, inn) in {"model.layers.0.attention.wq": (64, 64), "model.layers.0.feed_forward.w3": (128, 64)}.items():
        tensors[f"{m}.mindpet_delta_lora_a"] = rng.standard_normal((4, inn)).astype(np.float32)
        tensors[f"{m}.mindpet_delta_lora_b"] = rng.standard_normal((out, 4)).astype(np.float32)
    adapter = str(tmp_path / "llama_adapter.ckpt")
    write_adapter_file(tensors, adapter, metadata={"source": "mindpet_lite", "pet_config": {
        "lora_rank": 4, "lora_alpha": 16, "target_modules": ".*wq|.*w3"}})
    assert main(["export-peft", "--adapter", adapter, "--out", str(tmp_path / "peft")]) == 0
    with open(tmp_path / "peft" / "adapter_config.json", encoding="utf-8") as f:
        assert json.load(f)["target_modules"] == ["q_proj", "up_proj"]
    assert main(["import-peft", "--peft-dir", str(tmp_path / "peft"), "--out", str(tmp_path / "back.safetensors")]) == 0
    back, meta = read_adapter(str(tmp_path / "back.safetensors"))
    assert meta["pet_config"]["lora_alpha"] == 16 and sorted(back) == sorted(tensors)
    assert main(["export-peft", "--adapter", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "p2")]) == 2
    assert "no such file" in capsys.readouterr().err

    weights = {n: rng.standard_normal(s).astype(np.float32) for n, s in llama_param_shapes(TINY_LLAMA).items()}
    _files.write_checkpoint(weights, str(tmp_path / "ms.ckpt"))
    cfg = tmp_path / "model.json"  # a run YAML's model.model_config (JSON is YAML too)
    cfg.write_text(json.dumps({"model": {"model_config": dict(TINY_LLAMA, type="LlamaConfig")}}))
    assert main(["convert-base", "--from", "mindspore", "--src", str(tmp_path / "ms.ckpt"), "--out",
                 str(tmp_path / "hf"), "--model-config", str(cfg)]) == 0
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]
    assert main(["convert-base", "--from", "hf", "--src", str(tmp_path / "hf"), "--out",
                 str(tmp_path / "again.safetensors")]) == 0
    again, _ = _files.read_checkpoint(str(tmp_path / "again.safetensors"))
    assert sorted(again) == sorted(weights)
    np.testing.assert_array_equal(again["model.layers.1.attention.wk.weight"], weights["model.layers.1.attention.wk.weight"])
    assert main(["convert-base", "--from", "hf", "--src", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "x.ckpt")]) == 2
    assert not os.path.exists(tmp_path / "x.ckpt")
