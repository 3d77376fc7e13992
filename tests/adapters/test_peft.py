"""HF PEFT export / import without torch (loading into PEFT itself is in test_interop.py)."""
import json
import os

import numpy as np
import pytest

from mindpet_lite.adapters.io import read_adapter
from mindpet_lite.adapters.peft import export_peft, import_peft, read_peft_adapter
from mindpet_lite import _files
from mindpet_lite.adapters.metadata import write_adapter_file

R = 4


def _adapter(rng, layers=2, leaves=(("attention", "wq", 64, 64), ("attention", "wv", 32, 64),
                                     ("feed_forward", "w2", 64, 128))):
    tensors = {}
    for i in range(layers):
        for group, leaf, out, inn in leaves:
            m = f"model.layers.{i}.{group}.{leaf}"
            tensors[f"{m}.mindpet_delta_lora_a"] = rng.standard_normal((R, inn)).astype(np.float32)
            tensors[f"{m}.mindpet_delta_lora_b"] = rng.standard_normal((out, R)).astype(np.float32)
    meta = {"source": "mindpet_lite", "pet_config": {"pet_type": "lora", "lora_rank": R, "lora_alpha": 8,
                                                     "lora_dropout": 0.05, "use_rslora": True,
                                                     "target_modules": ".*wq|.*wv|.*w2"}}
    return tensors, meta


def test_export_layout(tmp_path, rng):
    tensors, meta = _adapter(rng)
    out = str(tmp_path / "peft")
    config = export_peft((tensors, meta), out)
    with open(os.path.join(out, "adapter_config.json"), encoding="utf-8") as f:
        on_disk = json.load(f)
    assert on_disk == config
    assert (config["peft_type"], config["task_type"], config["r"], config["lora_alpha"], config["use_rslora"],
            config["bias"], config["lora_dropout"]) == ("LORA", "CAUSAL_LM", R, 8, True, "none", 0.05)
    assert config["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    assert config["base_model_name_or_path"] is None and config["modules_to_save"] is None
    weights, extras = _files.read_checkpoint(os.path.join(out, "adapter_model.safetensors"))
    assert extras == {"format": "pt"}
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"
    np.testing.assert_array_equal(weights[key], tensors["model.layers.1.attention.wq.mindpet_delta_lora_a"])
    np.testing.assert_array_equal(weights["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"],
                                  tensors["model.layers.0.feed_forward.w2.mindpet_delta_lora_b"])
    assert len(weights) == len(tensors)


def test_export_import_round_trip(tmp_path, rng):
    tensors, meta = _adapter(rng)
    tensors["lm_head.weight"] = rng.standard_normal((128, 64)).astype(np.float32)  # left trainable
    src = str(tmp_path / "a.safetensors")
    write_adapter_file(tensors, src, metadata=meta)
    out = str(tmp_path / "peft")
    config = export_peft(src, out)
    assert config["modules_to_save"] == ["lm_head"]
    back, back_meta = import_peft(out, str(tmp_path / "b.ckpt"))
    assert sorted(back) == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(back[name], value)
    cfg = back_meta["pet_config"]
    assert (cfg["lora_rank"], cfg["lora_alpha"], cfg["use_rslora"]) == (R, 8, True)
    assert back_meta["scaling"] == pytest.approx(8 / 2.0)
    assert back_meta["source"] == "peft"
    on_disk, disk_meta = read_adapter(str(tmp_path / "b.ckpt"))
    assert disk_meta == back_meta and sorted(on_disk) == sorted(tensors)
    assert read_adapter(out)[1]["pet_config"] == cfg  # read_adapter takes a PEFT dir as well


def test_export_regex_when_layers_differ(tmp_path, rng):
    tensors, meta = _adapter(rng)
    tensors = {k: v for k, v in tensors.items() if not k.startswith("model.layers.1.attention.wv")}
    config = export_peft((tensors, meta), str(tmp_path / "p"))
    assert isinstance(config["target_modules"], str)
    import re
    pattern = re.compile(config["target_modules"])
    assert pattern.fullmatch("model.layers.0.self_attn.v_proj")
    assert not pattern.fullmatch("model.layers.1.self_attn.v_proj")


def test_export_refusals(tmp_path, rng):
    tensors, meta = _adapter(rng)
    with pytest.raises(ValueError, match="no lora_alpha"):
        export_peft((tensors, {}), str(tmp_path / "p1"))
    export_peft((tensors, {}), str(tmp_path / "p1"), lora_alpha=16)  # MindFormers files: alpha given
    odd = dict(tensors, **{"model.vision.proj.mindpet_delta_lora_a": np.zeros((R, 4), np.float32),
                           "model.vision.proj.mindpet_delta_lora_b": np.zeros((4, R), np.float32)})
    with pytest.raises(ValueError, match="no Hugging Face Llama counterpart: model.vision.proj"):
        export_peft((odd, meta), str(tmp_path / "p2"))
    assert not os.path.exists(tmp_path / "p2" / "adapter_config.json")
    open(tmp_path / "file", "w").close()
    with pytest.raises(NotADirectoryError):
        export_peft((tensors, meta), str(tmp_path / "file"))


def _peft_dir(tmp_path, rng, **config):
    tensors, meta = _adapter(rng)
    d = str(tmp_path / "peft")
    export_peft((tensors, meta), d)
    path = os.path.join(d, "adapter_config.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data.update(config)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return d


@pytest.mark.parametrize("config,message", [
    ({"use_dora": True}, "says use_dora=True but the weights hold 0 lora_magnitude_vector"),
    ({"rank_pattern": {"q_proj": 8}}, "not rank r=8 of its rank_pattern"),  # weights of rank 4
    ({"alpha_pattern": {"q_proj": 0}}, r"alpha_pattern\['q_proj'\] must be a finite int or float other than 0"),
    ({"bias": "all"}, "bias='all'"),
    ({"peft_type": "IA3"}, "peft_type must be 'LORA'"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out"),
    ({"r": 8}, "not rank r=8"),
])
def test_import_refusals(tmp_path, rng, config, message):
    d = _peft_dir(tmp_path, rng, **config)
    out = str(tmp_path / "out.ckpt")
    with open(out, "wb") as f:
        f.write(b"old")
    with pytest.raises(ValueError, match=message):
        import_peft(d, out, overwrite=True)
    with open(out, "rb") as f:
        assert f.read() == b"old"


def test_import_refuses_unrepresentable_weights(tmp_path, rng):
    d = _peft_dir(tmp_path, rng)
    weights, extras = _files.read_checkpoint(os.path.join(d, "adapter_model.safetensors"))
    weights["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = np.ones(64, np.float32)
    _files.write_checkpoint(weights, os.path.join(d, "adapter_model.safetensors"), text=extras)
    with pytest.raises(ValueError, match="DoRA"):
        read_peft_adapter(d)
    os.remove(os.path.join(d, "adapter_model.safetensors"))
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        read_peft_adapter(d)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        read_peft_adapter(str(tmp_path))
