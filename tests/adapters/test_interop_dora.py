"""DoRA and PiSSA / OLoRA adapters exchanged with HF PEFT on the converted tiny Llama: the same logits
(float32, max abs diff <= 1e-4) both ways, and the saved adapter is an ordinary one of the ORIGINAL base
(load, merge). Nothing is downloaded: models are built from configs."""
import json
import os

import numpy as np
import pytest
from mindspore import Tensor

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from mindpet_lite._files import read_checkpoint  # noqa: E402
from mindpet_lite.adapters import (export_peft, hf_to_mindspore, import_peft, load_adapter,  # noqa: E402
                                   merge_adapter, merge_weights, mindspore_to_hf, pet_config_from_metadata,
                                   read_adapter, save_adapter)
from mindpet_lite.adapters.convert import hf_config_to_llama  # noqa: E402
from mindpet_lite.pet import get_pet_model  # noqa: E402
from tests.adapters.conftest import ALL_TARGETS, TINY_LLAMA, numpy_params, randomize_peft_adapter, tiny_llama  # noqa: E402

TOL = 1e-4
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)


def _ids(seed=0):
    return np.random.default_rng(seed).integers(0, 128, (2, 12)).astype(np.int32)


def _peft_logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


def _perturb(net, seed):
    """'Trained' factors: A and B moved away from their start, the magnitude off the row norms."""
    rng = np.random.default_rng(seed)
    for name, p in net.parameters_and_names():
        if "mindpet_delta_lora_" not in name:
            continue
        value = p.asnumpy()
        if name.endswith("magnitude"):
            value = value * rng.uniform(0.8, 1.2, value.shape)
        else:
            value = value + 0.05 * rng.standard_normal(value.shape)
        p.set_data(Tensor(value.astype(np.float32)))


def _variant_net(use_dora, init):
    net = tiny_llama(seed=0, lora=False)
    get_pet_model(net, dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=ALL_TARGETS,
                            use_dora=use_dora, init_lora_weights=init))
    return net


def _check_on_the_original_base(meta, adapter, original, ids, ms_logits):  # pylint: disable=too-many-arguments
    """Another user's view: on the original base, a network built from the adapter's own pet_config
    with the adapter loaded, and the base's weights merged with it, both give ``ms_logits``. Returns
    the loaded network."""
    fresh = tiny_llama(seed=0, lora=False)
    get_pet_model(fresh, pet_config_from_metadata(meta))
    load_adapter(fresh, adapter)
    assert np.abs(fresh(Tensor(ids)).asnumpy() - ms_logits).max() <= TOL
    merged = merge_weights(original, adapter)
    plain = tiny_llama(seed=0, lora=False)
    for name, p in plain.parameters_and_names():
        p.set_data(Tensor(merged[name]))
    assert np.abs(plain(Tensor(ids)).asnumpy() - ms_logits).max() <= TOL
    return fresh


@pytest.mark.parametrize("use_dora, init", [(True, True), (False, "pissa"), (True, "pissa_niter_4"),
                                            (False, "olora")], ids=["dora", "pissa", "dora+pissa_niter_4", "olora"])
def test_mindspore_variant_runs_in_peft_on_the_original_base(tmp_path, use_dora, init):
    net = _variant_net(use_dora, init)
    _perturb(net, seed=3)
    ids = _ids()
    ms_logits = net(Tensor(ids)).asnumpy()

    adapter = str(tmp_path / "adapter.safetensors")
    meta = save_adapter(net, adapter)
    rank = 8 if init is not True else 4  # PiSSA / OLoRA: saved as a rank-2r plain LoRA of the original base
    assert meta["pet_config"]["lora_rank"] == rank and meta["pet_config"]["init_lora_weights"] is True
    assert meta["scaling"] == pytest.approx(2.0) and meta["pet_config"]["use_dora"] is use_dora
    export_peft(adapter, str(tmp_path / "peft"))
    with open(tmp_path / "peft" / "adapter_config.json", encoding="utf-8") as f:
        assert json.load(f)["use_dora"] is use_dora

    original = numpy_params(tiny_llama(seed=0, lora=False))  # the base as it was before the PiSSA start
    mindspore_to_hf(original, str(tmp_path / "hf"), config=net.config)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "peft"))
    peft_diff = float(np.abs(_peft_logits(model, ids) - ms_logits).max())
    with model.disable_adapter():
        effect = float(np.abs(_peft_logits(model, ids) - ms_logits).max())
    print(f"\nmindpet_lite use_dora={use_dora} init={init} -> PEFT: logits diff {peft_diff:.2e} "
          f"(the adapter moves logits by {effect:.3f})")
    assert peft_diff <= TOL and effect > 100 * TOL

    fresh = _check_on_the_original_base(meta, adapter, original, ids, ms_logits)
    merge_adapter(fresh)  # and merging the cells in place
    assert np.abs(fresh(Tensor(ids)).asnumpy() - ms_logits).max() <= 1e-5


def _peft_dora_dir(tmp_path):
    """A PEFT DoRA adapter on a transformers-made tiny Llama, random factors and magnitudes, saved."""
    hf_config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                         max_position_embeddings=16, rms_norm_eps=1e-6, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(hf_config)
    hf.save_pretrained(str(tmp_path / "hf"), safe_serialization=True)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True, target_modules=HF_TARGETS,
                             task_type="CAUSAL_LM")
    model = peft.get_peft_model(hf, config)
    randomize_peft_adapter(model, magnitude_spread=0.2)
    model.save_pretrained(str(tmp_path / "peft"))
    return hf_config, model


def test_peft_dora_adapter_runs_in_mindspore(tmp_path):
    hf_config, model = _peft_dora_dir(tmp_path)
    keys, _ = read_checkpoint(str(tmp_path / "peft" / "adapter_model.safetensors"))
    magnitude_keys = [k for k in keys if "magnitude" in k]
    assert len(magnitude_keys) == 14 and all(k.endswith(".lora_magnitude_vector") for k in magnitude_keys)
    ids = _ids(1)
    peft_logits = _peft_logits(model, ids)

    base_ckpt = str(tmp_path / "base.ckpt")
    hf_to_mindspore(str(tmp_path / "hf"), base_ckpt)
    _, meta = import_peft(str(tmp_path / "peft"), str(tmp_path / "imported.safetensors"))
    assert meta["pet_config"]["use_dora"] is True
    overrides = {k: v for k, v in hf_config_to_llama(hf_config.to_dict()).items() if k in TINY_LLAMA}
    net = tiny_llama(seed=1, lora=False, **overrides)
    base, _ = read_checkpoint(base_ckpt)
    for name, p in net.parameters_and_names():
        p.set_data(Tensor(base[name]))
    get_pet_model(net, pet_config_from_metadata(meta))
    load_adapter(net, str(tmp_path / "imported.safetensors"))
    diff = float(np.abs(net(Tensor(ids)).asnumpy() - peft_logits).max())
    print(f"\nPEFT DoRA -> mindpet_lite: logits diff {diff:.2e}")
    assert diff <= TOL

    # and back: the imported adapter exported again holds PEFT's own magnitudes
    export_peft(read_adapter(str(tmp_path / "imported.safetensors")), str(tmp_path / "again"))
    again, _ = read_checkpoint(str(tmp_path / "again" / "adapter_model.safetensors"))
    for key in magnitude_keys:
        np.testing.assert_array_equal(again[key], keys[key])


def test_peft_pissa_adapter_without_conversion_is_refused(tmp_path):
    _, model = _peft_dora_dir(tmp_path)
    path = os.path.join(tmp_path, "peft", "adapter_config.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["init_lora_weights"] = "pissa_niter_4"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=r"init_lora_weights='pissa_niter_4'.*path_initial_model_for_weight_conversion"):
        import_peft(str(tmp_path / "peft"))
    del model


def test_dora_with_rank_and_alpha_patterns_in_one_piece(tmp_path):
    """Issue 15's mixing case: use_dora with a rank_pattern / alpha_pattern (and a layer left out)
    saves, loads, merges and exports as one adapter, every layer with its own rank and scaling."""
    net = tiny_llama(seed=0, lora=False)
    config = dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=ALL_TARGETS, use_dora=True,
                  rank_pattern={r"model\.layers\.1\.attention\.wq": 2, "w2": 6},
                  alpha_pattern={"wv": 3}, layers_to_transform=[1])
    get_pet_model(net, config)
    ranks = {name: cell.lora_rank for name, cell in net.cells_and_names() if hasattr(cell, "use_dora")}
    assert ranks["model.layers.1.attention.wq"] == 2 and ranks["model.layers.1.feed_forward.w2"] == 6
    assert ranks["model.layers.1.attention.wk"] == 4 and not any(".layers.0." in name for name in ranks)
    _perturb(net, seed=5)
    ids = _ids(2)
    ms_logits = net(Tensor(ids)).asnumpy()

    adapter = str(tmp_path / "mixed.safetensors")
    meta = save_adapter(net, adapter)
    assert meta["pet_config"]["use_dora"] is True and meta["pet_config"]["rank_pattern"]
    export_peft(adapter, str(tmp_path / "peft"))
    with open(tmp_path / "peft" / "adapter_config.json", encoding="utf-8") as f:
        exported = json.load(f)
    assert exported["use_dora"] is True and exported["rank_pattern"] and exported["alpha_pattern"]

    original = numpy_params(tiny_llama(seed=0, lora=False))
    mindspore_to_hf(original, str(tmp_path / "hf"), config=net.config)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "peft"))
    peft_diff = float(np.abs(_peft_logits(model, ids) - ms_logits).max())
    print(f"\nDoRA + rank/alpha patterns -> PEFT: logits diff {peft_diff:.2e}")
    assert peft_diff <= TOL

    _check_on_the_original_base(meta, adapter, original, ids, ms_logits)
