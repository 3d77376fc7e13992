"""HF Llama <-> built-in Llama names and files (no torch needed; the logits check is in test_interop.py)."""
import json
import os

import numpy as np
import pytest

from mindpet_lite.adapters.convert import (hf_config_to_llama, hf_name_to_mindspore, hf_to_mindspore,
                                           llama_config_to_hf, mindspore_name_to_hf, mindspore_to_hf)
from mindpet_lite.models.llama import LlamaConfig, llama_param_shapes
from mindpet_lite import _files
from tests.adapters.conftest import TINY_LLAMA

PAIRS = [
    ("model.embed_tokens.weight", "model.tok_embeddings.embedding_weight"),
    ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.attention.wq.weight"),
    ("model.layers.1.self_attn.k_proj.weight", "model.layers.1.attention.wk.weight"),
    ("model.layers.1.self_attn.v_proj.weight", "model.layers.1.attention.wv.weight"),
    ("model.layers.11.self_attn.o_proj.weight", "model.layers.11.attention.wo.weight"),
    ("model.layers.0.mlp.gate_proj.weight", "model.layers.0.feed_forward.w1.weight"),
    ("model.layers.0.mlp.down_proj.weight", "model.layers.0.feed_forward.w2.weight"),
    ("model.layers.0.mlp.up_proj.weight", "model.layers.0.feed_forward.w3.weight"),
    ("model.layers.3.input_layernorm.weight", "model.layers.3.attention_norm.weight"),
    ("model.layers.3.post_attention_layernorm.weight", "model.layers.3.ffn_norm.weight"),
    ("model.norm.weight", "model.norm_out.weight"),
    ("lm_head.weight", "lm_head.weight"),
]


@pytest.mark.parametrize("hf,ms", PAIRS)
def test_names_both_ways(hf, ms):
    assert hf_name_to_mindspore(hf) == ms
    assert mindspore_name_to_hf(ms) == hf


def test_every_builtin_name_round_trips():
    for name in llama_param_shapes(TINY_LLAMA):
        hf = mindspore_name_to_hf(name)
        assert hf is not None and hf_name_to_mindspore(hf) == name
    assert hf_name_to_mindspore("model.layers.0.self_attn.q_proj.bias") is None
    assert mindspore_name_to_hf("model.layers.0.attention.wq.mindpet_delta_lora_a") is None


def _builtin_weights(rng, config=TINY_LLAMA):
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in llama_param_shapes(config).items()}


@pytest.mark.parametrize("shard", [None, 20000])
def test_files_round_trip(tmp_path, rng, shard):
    weights = _builtin_weights(rng)
    hf_dir = str(tmp_path / "hf")
    hf = mindspore_to_hf(weights, hf_dir, config=LlamaConfig.from_dict(TINY_LLAMA), max_shard_size=shard)
    assert sorted(hf) == sorted(mindspore_name_to_hf(n) for n in weights)
    files = sorted(os.listdir(hf_dir))
    if shard is None:
        assert files == ["config.json", "model.safetensors"]
    else:
        assert "model.safetensors.index.json" in files and len([f for f in files if f.startswith("model-")]) > 1
        with open(os.path.join(hf_dir, "model.safetensors.index.json"), encoding="utf-8") as f:
            assert set(json.load(f)["weight_map"]) == set(hf)
    from safetensors import safe_open
    first = sorted(f for f in files if f.endswith(".safetensors"))[0]
    with safe_open(os.path.join(hf_dir, first), "np") as f:
        assert f.metadata()["format"] == "pt"  # transformers refuses safetensors files without it
    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        hf_cfg = json.load(f)
    assert hf_cfg["num_key_value_heads"] == 2 and hf_cfg["intermediate_size"] == 128
    assert LlamaConfig.from_dict(hf_config_to_llama(hf_cfg)).to_dict() == LlamaConfig.from_dict(
        dict(TINY_LLAMA, max_position_embedding=16)).to_dict()
    out = str(tmp_path / "back.ckpt")
    back = hf_to_mindspore(hf_dir, out)
    on_disk, _ = _files.read_checkpoint(out)
    assert sorted(back) == sorted(weights) == sorted(on_disk)
    for name, value in weights.items():
        np.testing.assert_array_equal(on_disk[name], value)


def test_refusals(tmp_path, rng):
    weights = _builtin_weights(rng)
    hf = mindspore_to_hf(weights)
    # a bias (Qwen-like) has no built-in counterpart; the rotary buffer is skipped
    _files.write_checkpoint(dict(hf, **{"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}),
                         str(tmp_path / "bias.safetensors"))
    with pytest.raises(ValueError, match="q_proj.bias"):
        hf_to_mindspore(str(tmp_path / "bias.safetensors"))
    _files.write_checkpoint(dict(hf, **{"model.layers.0.self_attn.rotary_emb.inv_freq": np.zeros(8, np.float32)}),
                         str(tmp_path / "rot.safetensors"))
    assert len(hf_to_mindspore(str(tmp_path / "rot.safetensors"))) == len(weights)
    with pytest.raises(ValueError, match="not built-in Llama weights.*mindpet_delta_lora_a"):
        mindspore_to_hf(dict(weights, **{"model.layers.0.attention.wq.mindpet_delta_lora_a": np.zeros((2, 64))}))
    os.makedirs(tmp_path / "bin")
    open(tmp_path / "bin" / "pytorch_model.bin", "wb").close()
    with pytest.raises(ValueError, match="only safetensors"):
        hf_to_mindspore(str(tmp_path / "bin"))
    with pytest.raises(FileNotFoundError):
        hf_to_mindspore(str(tmp_path / "nothing"))
    out = str(tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="format='safetensors' does not match"):
        hf_to_mindspore(str(tmp_path / "rot.safetensors"), out, format="safetensors")
    assert not os.path.exists(out)
    with pytest.raises(ValueError, match="rope_scaling"):
        hf_config_to_llama({"model_type": "llama", "hidden_size": 64, "rope_scaling": {"rope_type": "llama3"}})
    with pytest.raises(ValueError, match="model_type must be 'llama'"):
        hf_config_to_llama({"model_type": "qwen2"})
    cfg = llama_config_to_hf(LlamaConfig.from_dict(TINY_LLAMA))
    assert cfg["num_hidden_layers"] == 2 and cfg["rope_theta"] == 10000.0
