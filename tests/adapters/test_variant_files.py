"""Adapter files of the variant keys: per-layer scaling in merge (numpy), load checks naming the layer,
modules_to_save required on load, PEFT export / import of the patterns and their errors."""
import json
import logging
import os

import numpy as np
import pytest

from mindpet_lite.adapters import export_peft, import_peft, load_adapter, merge_weights, save_adapter
from mindpet_lite.pet import LoraConfig, get_pet_model
from tests.adapters.conftest import randomize, tiny_llama
from tests.reference import merged_weight

A, B = "mindpet_delta_lora_a", "mindpet_delta_lora_b"
PATTERNS = dict(lora_rank=4, lora_alpha=8, target_modules=".*wq|.*wv", rank_pattern={"wq": 2},
                alpha_pattern={r"layers\.1\.attention\.wv": 12})


def scalings_by_hand():
    """{module: s} of PATTERNS, written out: wq r=2 alpha 8; wv r=4, alpha 8 (layer 0) or 12 (layer 1)."""
    return {"model.layers.0.attention.wq": 8 / 2, "model.layers.1.attention.wq": 8 / 2,
            "model.layers.0.attention.wv": 8 / 4, "model.layers.1.attention.wv": 12 / 4}


def lora_net(**changes):
    net = tiny_llama(lora=False)
    get_pet_model(net, dict(PATTERNS, lora_dropout=0.0, **changes))
    return randomize(net, seed=3)


def test_merge_uses_each_layers_own_scaling(tmp_path):
    net = lora_net()
    path = str(tmp_path / "a.safetensors")
    save_adapter(net, path)
    params = {n: p.asnumpy().copy() for n, p in net.parameters_and_names()}
    base = {n: v for n, v in params.items() if "mindpet_delta_lora" not in n}
    merged = merge_weights(base, path)
    for module, s in scalings_by_hand().items():
        want = merged_weight(base[f"{module}.weight"], params[f"{module}.{A}"], params[f"{module}.{B}"], s, "out_in")
        np.testing.assert_allclose(merged[f"{module}.weight"], want, rtol=1e-5, atol=1e-6, err_msg=module)
    assert params["model.layers.0.attention.wq." + A].shape == (2, 64)


def test_load_onto_another_alpha_pattern_names_the_layer(tmp_path):
    path = str(tmp_path / "a.safetensors")
    save_adapter(lora_net(), path)
    other = lora_net(alpha_pattern={r"layers\.1\.attention\.wv": 4})
    with pytest.raises(ValueError, match=r"trained with scaling 3 but model.layers.1.attention.wv computes with 1"):
        load_adapter(other, path)
    with pytest.raises(ValueError, match=r"adapter rank 2, network rank 4"):
        load_adapter(lora_net(rank_pattern={}), path)


def test_save_checks_the_cells_against_the_patterns(tmp_path):
    net = lora_net()
    with pytest.raises(ValueError, match=r"config.lora_rank=4 but model.layers.0.attention.wq has lora_rank=2"):
        save_adapter(net, str(tmp_path / "a.ckpt"), config=dict(PATTERNS, rank_pattern={}))
    assert not os.path.exists(tmp_path / "a.ckpt")


def test_modules_to_save_are_saved_alone_and_required_on_load(tmp_path):
    net = lora_net(modules_to_save=["lm_head"])
    path = str(tmp_path / "a.safetensors")
    meta = save_adapter(net, path)
    from mindpet_lite._files import read_checkpoint
    tensors, _ = read_checkpoint(path)
    assert sorted(n for n in tensors if "mindpet_delta_lora" not in n) == ["lm_head.weight"]
    assert meta["pet_config"]["modules_to_save"] == ["lm_head"]
    lora_only = {n: v for n, v in tensors.items() if n != "lm_head.weight"}
    from mindpet_lite.adapters.metadata import write_adapter_file
    write_adapter_file(lora_only, str(tmp_path / "b.safetensors"), meta)
    with pytest.raises(ValueError, match=r"missing keys .*lm_head.weight"):
        load_adapter(lora_net(modules_to_save=["lm_head"]), str(tmp_path / "b.safetensors"))


def test_export_writes_peft_patterns_and_drops_loraplus(tmp_path, caplog):
    net = lora_net(loraplus_lr_ratio=8.0, layers_to_transform=[1])
    path = str(tmp_path / "a.safetensors")
    save_adapter(net, path)
    with caplog.at_level(logging.INFO):
        config = export_peft(path, str(tmp_path / "peft"))
    assert "loraplus_lr_ratio=8 is a training setting" in caplog.text
    with open(tmp_path / "peft" / "adapter_config.json", encoding="utf-8") as f:
        written = json.load(f)
    assert written == config and "loraplus_lr_ratio" not in written
    assert (written["r"], written["lora_alpha"]) == (4, 8)
    assert written["rank_pattern"] == {"model.layers.1.self_attn.q_proj": 2}
    assert written["alpha_pattern"] == {"model.layers.1.self_attn.v_proj": 12}
    assert written["layers_to_transform"] == [1] and sorted(written["target_modules"]) == ["q_proj", "v_proj"]
    # and back: the imported config gives every layer the rank and scaling it had
    _, meta = import_peft(str(tmp_path / "peft"))
    back = LoraConfig.from_dict(meta["pet_config"])
    for module in ("model.layers.1.attention.wq", "model.layers.1.attention.wv"):
        assert back.rank_for(module) == net.pet_config.rank_for(module)
        assert back.scaling_for(module) == pytest.approx(net.pet_config.scaling_for(module))
    assert back.layers_to_transform == [1] and back.loraplus_lr_ratio is None


def test_export_without_metadata_refuses_mixed_ranks(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {f"model.layers.0.attention.wq.{A}": rng.standard_normal((2, 64)).astype(np.float32),
               f"model.layers.0.attention.wq.{B}": rng.standard_normal((64, 2)).astype(np.float32),
               f"model.layers.0.attention.wv.{A}": rng.standard_normal((4, 64)).astype(np.float32),
               f"model.layers.0.attention.wv.{B}": rng.standard_normal((32, 4)).astype(np.float32)}
    with pytest.raises(ValueError, match=r"different ranks \[2, 4\] and the adapter has no metadata"):
        export_peft((tensors, {}), str(tmp_path / "peft"), lora_alpha=8)
    assert not os.path.exists(tmp_path / "peft" / "adapter_config.json")


@pytest.mark.parametrize("key, value, text", [
    ("rank_pattern", ["q_proj"], "adapter_config.json rank_pattern must be a mapping"),
    ("rank_pattern", {"q_proj": 0}, r"adapter_config.json rank_pattern\['q_proj'\] must be an int > 0"),
    ("layers_to_transform", [-1], "layers_to_transform"),
])
def test_import_checks_peft_variant_values(tmp_path, key, value, text):
    net = lora_net()
    save_adapter(net, str(tmp_path / "a.safetensors"))
    export_peft(str(tmp_path / "a.safetensors"), str(tmp_path / "peft"))
    cfg_path = tmp_path / "peft" / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    data[key] = value
    cfg_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=text):
        import_peft(str(tmp_path / "peft"), str(tmp_path / "out.ckpt"))
    assert not os.path.exists(tmp_path / "out.ckpt")


def test_cells_built_by_hand_with_different_ranks_are_described_by_patterns(tmp_path):
    """A network without a pet_config whose LoRA cells differ in rank / alpha: the metadata describes each
    layer (rank_pattern / alpha_pattern of exact paths), so merge gives each its own scaling."""
    import mindspore as ms
    from mindspore import nn
    from mindpet_lite.delta import LoRADense
    from mindpet_lite.adapters import pet_config_from_metadata

    class Sub(nn.Cell):
        def __init__(self):
            super().__init__()
            self.fc1 = LoRADense(4, 4, 4, 8, compute_dtype=ms.float32)  # sub.fc1: an unanchored 'fc1' matches it

        def construct(self, x):
            return self.fc1(x)

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.fc1 = LoRADense(8, 6, 2, 8, compute_dtype=ms.float32)
            self.fc2 = LoRADense(6, 4, 4, 8, compute_dtype=ms.float32)
            self.inner = nn.SequentialCell([LoRADense(4, 4, 4, 3, compute_dtype=ms.float32)])
            self.sub = Sub()

        def construct(self, x):
            return self.sub(self.inner(self.fc2(self.fc1(x))))

    net = randomize(Net(), seed=4)
    for name, p in net.parameters_and_names():
        p.requires_grad = "mindpet_delta_lora" in name
    path = str(tmp_path / "a.safetensors")
    meta = save_adapter(net, path)
    config = pet_config_from_metadata(meta)
    assert (config.lora_rank, config.lora_alpha) == (4, 8)
    assert config.rank_pattern == {"^fc1": 2} and config.alpha_pattern == {r"inner\.0": 3}
    params = {n: p.asnumpy().copy() for n, p in net.parameters_and_names()}
    base = {n: v for n, v in params.items() if "mindpet_delta_lora" not in n}
    merged = merge_weights(base, path)
    for module, s in {"fc1": 8 / 2, "fc2": 8 / 4, "inner.0": 3 / 4, "sub.fc1": 8 / 4}.items():
        want = merged_weight(base[f"{module}.weight"], params[f"{module}.{A}"], params[f"{module}.{B}"], s, "out_in")
        np.testing.assert_allclose(merged[f"{module}.weight"], want, rtol=1e-5, atol=1e-6, err_msg=module)
