"""HF PEFT exchange of MindFormers mcore adapters (adapters/peft_mcore.py): export splits the fused
pairs into q/k/v and gate/up (checked row by row and with PEFT on a transformers Qwen3), import fuses
them back exactly."""
import json
import os

import numpy as np
import pytest

from mindpet_lite import _files
from mindpet_lite.adapters import mcore
from mindpet_lite.adapters.io import read_adapter
from mindpet_lite.adapters.merge import merge_checkpoint
from mindpet_lite.adapters.metadata import write_adapter_file
from mindpet_lite.adapters.peft import export_peft, import_peft
from mindpet_lite.cli import main
from mindpet_lite.pet.config import LoraConfig
from tests import reference as ref
from tests.adapters.test_mcore import (ALPHA, D, FFN, HF_CONFIG, HIDDEN, LAYERS, NG, NH, PET_CONFIG, R, SCALING,
                                       _adapter, _base, _mf_mixin)


# ------------------------------------------------------------------------------------------------
# export to HF PEFT
# ------------------------------------------------------------------------------------------------
def test_export_splits_fused_pairs(tmp_path, rng):
    tensors, meta = _adapter(rng)
    tensors["model.embedding.word_embeddings.weight"] = rng.standard_normal((64, HIDDEN)).astype(np.float32)
    out = str(tmp_path / "peft")
    config = export_peft((tensors, meta), out, model_config=HF_CONFIG)
    assert sorted(config["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"])
    assert (config["r"], config["lora_alpha"], config["modules_to_save"]) == (R, ALPHA, ["model.embed_tokens"])
    weights, _ = _files.read_checkpoint(os.path.join(out, "adapter_model.safetensors"))
    p = "base_model.model."
    np.testing.assert_array_equal(weights[f"{p}model.embed_tokens.weight"],
                                  tensors["model.embedding.word_embeddings.weight"])
    for i in range(LAYERS):
        for module, hf_names, split in (
                ("self_attention.linear_qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                 lambda w: ref.mcore_split_qkv(w, NH, NG, D)),
                ("mlp.linear_fc1", ("mlp.gate_proj", "mlp.up_proj"), ref.mcore_split_fc1),
                ("self_attention.linear_proj", ("self_attn.o_proj",), lambda w: (w,)),
                ("mlp.linear_fc2", ("mlp.down_proj",), lambda w: (w,))):
            ours = f"model.decoder.layers.{i}.{module}"
            fused_delta = SCALING * tensors[f"{ours}.mindpet_delta_lora_b"] @ tensors[f"{ours}.mindpet_delta_lora_a"]
            for hf, want in zip(hf_names, split(fused_delta)):
                a = weights[f"{p}model.layers.{i}.{hf}.lora_A.weight"]
                b = weights[f"{p}model.layers.{i}.{hf}.lora_B.weight"]
                np.testing.assert_array_equal(a, tensors[f"{ours}.mindpet_delta_lora_a"])
                np.testing.assert_allclose(SCALING * b @ a, want, rtol=1e-6, atol=1e-6)


def test_export_splits_dora_magnitudes(tmp_path, rng):
    tensors, meta = _adapter(rng)
    for key in [k for k in tensors if k.endswith("_b")]:
        tensors[key.replace("lora_b", "lora_magnitude")] = rng.uniform(0.5, 1.5, tensors[key].shape[0]).astype(np.float32)
    meta = {**meta, "pet_config": {**PET_CONFIG, "use_dora": True}}
    config = export_peft((tensors, meta), str(tmp_path / "peft"), model_config=HF_CONFIG)
    weights, _ = _files.read_checkpoint(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert config["use_dora"]
    m = tensors["model.decoder.layers.0.self_attention.linear_qkv.mindpet_delta_lora_magnitude"]
    for name, want in zip(("q_proj", "k_proj", "v_proj"), ref.mcore_split_qkv(m, NH, NG, D)):
        np.testing.assert_array_equal(
            weights[f"base_model.model.model.layers.0.self_attn.{name}.lora_magnitude_vector"], want)
    gate, up = ref.mcore_split_fc1(tensors["model.decoder.layers.1.mlp.linear_fc1.mindpet_delta_lora_magnitude"])
    for name, want in (("gate_proj", gate), ("up_proj", up)):
        np.testing.assert_array_equal(weights[f"base_model.model.model.layers.1.mlp.{name}.lora_magnitude_vector"], want)


def test_export_mindformers_full_checkpoint(tmp_path, rng):
    """A MindFormers mcore LoRA checkpoint (lora_A / lora_B beside the base weights and optimizer states,
    no metadata) exports its LoRA pairs only, with the alpha given."""
    tensors, _ = _adapter(rng, names_style="mindformers")
    full = dict(tensors, **{k: v for k, v in _base(rng).items()},
                **{"adam_m.model.decoder.layers.0.mlp.linear_fc1.lora_A.weight": np.zeros((R, HIDDEN), np.float32)})
    path = str(tmp_path / "mf.ckpt")
    _files.write_checkpoint(full, path, "ckpt")
    with pytest.raises(ValueError, match="lora_alpha"):
        export_peft(path, str(tmp_path / "x"), model_config=HF_CONFIG)
    config = export_peft(path, str(tmp_path / "peft"), lora_alpha=ALPHA, model_config=HF_CONFIG)
    weights, _ = _files.read_checkpoint(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert config["modules_to_save"] is None and len(weights) == 2 * 7 * LAYERS
    np.testing.assert_array_equal(weights["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"],
                                  tensors["model.decoder.layers.1.mlp.linear_fc2.lora_B.weight"])


def test_export_errors(tmp_path, rng):
    tensors, meta = _adapter(rng)
    with pytest.raises(ValueError, match="num_attention_heads.*--model-config"):
        export_peft((tensors, meta), str(tmp_path / "a"))
    with pytest.raises(ValueError, match=r"linear_qkv has 64 rows .* = 48"):
        export_peft((tensors, meta), str(tmp_path / "b"), model_config={**HF_CONFIG, "num_attention_heads": 2})
    with pytest.raises(ValueError, match="recorded|records"):
        export_peft((tensors, {**meta, "mcore_layout": mcore.layout_from_config(HF_CONFIG).to_dict()}),
                    str(tmp_path / "c"), model_config={**HF_CONFIG, "use_contiguous_weight_layout_attention": True})
    mixed = dict(tensors, **{"model.layers.0.attention.wq.mindpet_delta_lora_a": np.zeros((R, 8), np.float32),
                             "model.layers.0.attention.wq.mindpet_delta_lora_b": np.zeros((8, R), np.float32)})
    with pytest.raises(ValueError, match="mixes mcore module names"):
        export_peft((mixed, meta), str(tmp_path / "d"), model_config=HF_CONFIG)
    assert not any(os.path.exists(tmp_path / d) for d in "abcd")


def test_cli_export_with_model_config(tmp_path, rng, capsys):
    tensors, meta = _adapter(rng)
    adapter = str(tmp_path / "adapter.safetensors")
    write_adapter_file(tensors, adapter, meta)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(HF_CONFIG))
    assert main(["export-peft", "--adapter", adapter, "--out", str(tmp_path / "peft"), "--model-config", str(cfg)]) == 0
    assert "q_proj" in capsys.readouterr().out
    assert main(["export-peft", "--adapter", adapter, "--out", str(tmp_path / "peft2")]) == 2
    assert "--model-config" in capsys.readouterr().err


def test_peft_on_transformers_qwen3_matches_merged_mcore_base(tmp_path, rng):
    """The exported adapter in PEFT on a transformers Qwen3 whose base is the de-fused mcore base gives the
    logits of that Qwen3 carrying the merged mcore base (our merge, then de-fused by the numpy reference)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    mixin = _mf_mixin()
    torch.manual_seed(0)
    hf_cfg = transformers.Qwen3Config(**{k: v for k, v in HF_CONFIG.items() if k != "model_type"},
                                      tie_word_embeddings=False, attention_bias=False)
    model = transformers.Qwen3ForCausalLM(hf_cfg).eval()
    hf_sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    # the mcore base, packed by MindFormers' own code
    base = {}
    for i in range(LAYERS):
        h = f"model.layers.{i}."
        m = f"model.decoder.layers.{i}."
        base.update(mixin.concat_qkv_interleaved(None, hf_sd[h + "self_attn.q_proj.weight"],
                                                 hf_sd[h + "self_attn.k_proj.weight"],
                                                 hf_sd[h + "self_attn.v_proj.weight"],
                                                 m + "self_attention.linear_q.weight", D, NG, NH))
        base.update(mixin.concat_linear_fc1_interleaved(None, hf_sd[h + "mlp.gate_proj.weight"],
                                                        hf_sd[h + "mlp.up_proj.weight"], m + "mlp.gating.weight", FFN))
        base[m + "self_attention.linear_proj.weight"] = hf_sd[h + "self_attn.o_proj.weight"]
        base[m + "mlp.linear_fc2.weight"] = hf_sd[h + "mlp.down_proj.weight"]
    tensors, meta = _adapter(rng)
    tensors = {k: 0.3 * v for k, v in tensors.items()}
    merged = merge_checkpoint(base, (tensors, meta))
    export_peft((tensors, meta), str(tmp_path / "peft"), model_config=HF_CONFIG)

    ids = torch.tensor([[1, 5, 9, 2, 33, 17, 8, 4]])
    peft_model = peft.PeftModel.from_pretrained(model, str(tmp_path / "peft")).eval()
    with torch.no_grad():
        got = peft_model(ids).logits.numpy()
    reference = transformers.Qwen3ForCausalLM(hf_cfg).eval()
    sd = {k: torch.tensor(v) for k, v in hf_sd.items()}
    for i in range(LAYERS):
        h, m = f"model.layers.{i}.", f"model.decoder.layers.{i}."
        for name, w in zip(("q_proj", "k_proj", "v_proj"),
                           ref.mcore_split_qkv(merged[m + "self_attention.linear_qkv.weight"], NH, NG, D)):
            sd[f"{h}self_attn.{name}.weight"] = torch.tensor(w)
        for name, w in zip(("gate_proj", "up_proj"), ref.mcore_split_fc1(merged[m + "mlp.linear_fc1.weight"])):
            sd[f"{h}mlp.{name}.weight"] = torch.tensor(w)
        sd[h + "self_attn.o_proj.weight"] = torch.tensor(merged[m + "self_attention.linear_proj.weight"])
        sd[h + "mlp.down_proj.weight"] = torch.tensor(merged[m + "mlp.linear_fc2.weight"])
    reference.load_state_dict(sd)
    with torch.no_grad():
        want = reference(ids).logits.numpy()
        plain = transformers.Qwen3ForCausalLM(hf_cfg).eval()
        plain.load_state_dict({k: torch.tensor(v) for k, v in hf_sd.items()})
        without = plain(ids).logits.numpy()
    assert np.max(np.abs(want - without)) > 1e-2  # the adapter changes the logits
    print(f"\nmcore adapter -> PEFT on transformers Qwen3 vs merged mcore base: logits diff "
          f"{np.max(np.abs(got - want)):.2e} (the adapter moves them by {np.max(np.abs(want - without)):.2e})")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# import from HF PEFT onto mcore names
# ------------------------------------------------------------------------------------------------
def _edit_peft(peft_dir, edit):
    path = os.path.join(peft_dir, "adapter_model.safetensors")
    weights, _ = _files.read_checkpoint(path)
    edit(weights)
    os.remove(path)
    _files.write_checkpoint(weights, path, "safetensors", text={"format": "pt"})


def test_import_round_trip_is_exact(tmp_path, rng):
    tensors, meta = _adapter(rng)
    export_peft((tensors, meta), str(tmp_path / "peft"), model_config=HF_CONFIG)
    back, meta_back = import_peft(str(tmp_path / "peft"), target="mcore", model_config=HF_CONFIG)
    assert sorted(back) == sorted(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(back[name], array)
    cfg = meta_back["pet_config"]
    assert (cfg["lora_rank"], cfg["lora_alpha"], cfg["rank_pattern"], cfg["alpha_pattern"]) == (R, ALPHA, [], [])
    assert meta_back["mcore_layout"]["num_attention_heads"] == NH


def test_import_different_a_stacks_rank_exactly(tmp_path, rng):
    """PEFT-trained q/k/v have their own A's: the fused pair is rank 3r (gate/up: 2r), exact per part;
    only q_proj / v_proj adapted in layer 1: k's rows stay zero."""
    tensors, meta = _adapter(rng)
    peft_dir = str(tmp_path / "peft")
    export_peft((tensors, meta), peft_dir, model_config=HF_CONFIG)
    p = "base_model.model.model.layers."

    def edit(weights):
        for key in list(weights):
            if ".lora_A." in key and any(m in key for m in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
                weights[key] = rng.standard_normal(weights[key].shape).astype(np.float32)
        for key in [k for k in weights if k.startswith(p + "1.self_attn.k_proj.")]:
            weights.pop(key)
    _edit_peft(peft_dir, edit)
    hf, _ = _files.read_checkpoint(os.path.join(peft_dir, "adapter_model.safetensors"))
    back, meta_back = import_peft(peft_dir, target="mcore", model_config=HF_CONFIG)
    cfg = meta_back["pet_config"]
    qkv0 = "model.decoder.layers.0.self_attention.linear_qkv"
    assert back[f"{qkv0}.mindpet_delta_lora_a"].shape == (3 * R, HIDDEN)
    assert back["model.decoder.layers.1.self_attention.linear_qkv.mindpet_delta_lora_a"].shape == (2 * R, HIDDEN)
    assert back["model.decoder.layers.0.mlp.linear_fc1.mindpet_delta_lora_a"].shape == (2 * R, HIDDEN)
    config = LoraConfig.from_dict(cfg)
    for i in range(LAYERS):
        for module, hf_names, split in (
                ("self_attention.linear_qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                 lambda w: ref.mcore_split_qkv(w, NH, NG, D)),
                ("mlp.linear_fc1", ("mlp.gate_proj", "mlp.up_proj"), ref.mcore_split_fc1)):
            ours = f"model.decoder.layers.{i}.{module}"
            s = config.scaling_for(ours)
            fused = s * back[f"{ours}.mindpet_delta_lora_b"] @ back[f"{ours}.mindpet_delta_lora_a"]
            for name, got in zip(hf_names, split(fused)):
                key = f"{p}{i}.{name}.lora_"
                if key + "A.weight" not in hf:
                    assert not got.any()
                    continue
                want = SCALING * hf[key + "B.weight"] @ hf[key + "A.weight"]
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_import_errors_and_cli(tmp_path, rng, capsys):
    tensors, meta = _adapter(rng)
    peft_dir = str(tmp_path / "peft")
    export_peft((tensors, meta), peft_dir, model_config=HF_CONFIG)
    with pytest.raises(ValueError, match="needs model_config"):
        import_peft(peft_dir, target="mcore")
    with pytest.raises(ValueError, match="num_attention_heads"):
        import_peft(peft_dir, target="mcore", model_config={"intermediate_size": FFN})
    with pytest.raises(ValueError, match="target"):
        import_peft(peft_dir, target="gpt")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(HF_CONFIG))
    out = str(tmp_path / "imported.safetensors")
    assert main(["import-peft", "--peft-dir", peft_dir, "--out", out, "--target", "mcore",
                 "--model-config", str(cfg)]) == 0
    back, _ = read_adapter(out)
    assert sorted(back) == sorted(tensors)
    assert main(["import-peft", "--peft-dir", peft_dir, "--out", str(tmp_path / "x.ckpt"), "--target", "mcore"]) == 2
    assert "model_config" in capsys.readouterr().err
