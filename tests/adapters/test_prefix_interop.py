"""Prefix adapters (ptuning2 / prefixtuning) through files and HF PEFT's PREFIX_TUNING on the converted
Hugging Face Llama: the same logits both ways (max abs diff <= 1e-4), PEFT's rotary offset converted."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from mindpet_lite.adapters import (export_peft, import_peft, load_adapter, merge_weights,  # noqa: E402
                                   mindspore_to_hf, pet_config_from_metadata, read_adapter, save_adapter)
from mindpet_lite.cli import main  # noqa: E402
from mindpet_lite.models.llama import LlamaForCausalLM  # noqa: E402
from mindpet_lite.pet import Ptuning2Config, get_pet_model  # noqa: E402
from tests.adapters.conftest import TINY_LLAMA, numpy_params, randomize  # noqa: E402

TOL = 1e-4
MARKS = ("mindpet_delta_ptuning2", "mindpet_delta_prefixtuning")
PET_CONFIGS = {
    "ptuning2": dict(pet_type="ptuning2", pre_seq_len=3, prefix_projection=False, dropout_prob=0.0),
    "ptuning2_mlp": dict(pet_type="ptuning2", pre_seq_len=3, prefix_projection=True, projection_dim=8,
                         dropout_prob=0.0),
    "prefixtuning": dict(pet_type="prefixtuning", prefix_token_num=2, mid_dim=8, dropout_rate=0.0),
}


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)


def _ids(seed=0, shape=(2, 9)):
    return np.random.default_rng(seed).integers(0, 128, shape).astype(np.int32)


def _hf_logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


def _base(seed=0):
    ms.set_seed(seed)
    return LlamaForCausalLM(dict(TINY_LLAMA))


def _prefixed(pet, seed=0):
    net = get_pet_model(_base(seed), pet)
    return randomize(net, seed=5, scale=0.5, names=MARKS)  # the trainable tensors: the indices are constants


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    """(MindSpore base params, the converted HF LlamaForCausalLM dir) of the tiny base."""
    folder = tmp_path_factory.mktemp("hf")
    net = _base()
    base = numpy_params(net)
    mindspore_to_hf(base, str(folder), config=net.config)
    return base, str(folder), net(Tensor(_ids())).asnumpy()


@pytest.mark.parametrize("kind", sorted(PET_CONFIGS))
def test_prefix_adapter_runs_in_peft_and_back(kind, tmp_path, hf_base):
    _, hf_dir, base_logits = hf_base
    net = _prefixed(PET_CONFIGS[kind])
    ids = _ids()
    ms_logits = net(Tensor(ids)).asnumpy()
    assert np.abs(ms_logits - base_logits).max() > 100 * TOL  # the prefix matters

    meta = save_adapter(net, str(tmp_path / "adapter.safetensors"))
    assert meta["pet_config"]["pet_type"] == PET_CONFIGS[kind]["pet_type"] and meta["kind"] == "prefix_adapter"
    assert meta["prefix"]["num_kv_heads"] == 2 and meta["prefix"]["prefix_projection"] == (kind != "ptuning2")
    config = export_peft(str(tmp_path / "adapter.safetensors"), str(tmp_path / "peft"))
    assert config["peft_type"] == "PREFIX_TUNING" and config["prefix_projection"] == (kind != "ptuning2")
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "peft"))
    peft_logits = _hf_logits(model, ids)
    diff = float(np.abs(peft_logits - ms_logits).max())
    print(f"\n{kind} -> PEFT PREFIX_TUNING: logits diff {diff:.2e}")
    assert diff <= TOL

    # back: PEFT's directory as a ptuning2 table (the MLP folded in), the same logits
    _, imported = import_peft(str(tmp_path / "peft"), str(tmp_path / "back.ckpt"))
    back = get_pet_model(_base(seed=7), pet_config_from_metadata(imported))
    for name, p in back.parameters_and_names():
        if not any(m in name for m in MARKS):
            p.set_data(Tensor(hf_base[0][name]))
    load_adapter(back, str(tmp_path / "back.ckpt"))
    assert float(np.abs(back(Tensor(ids)).asnumpy() - peft_logits).max()) <= TOL


@pytest.mark.parametrize("projection", [False, True])
def test_peft_made_prefix_runs_in_mindspore(projection, tmp_path, hf_base):
    base, hf_dir, _ = hf_base
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=projection,
                                     encoder_hidden_size=16)
    model = peft.get_peft_model(hf, config)
    model.save_pretrained(str(tmp_path / "peft"))
    ids = _ids(1)
    peft_logits = _hf_logits(model, ids)

    tensors, meta = read_adapter(str(tmp_path / "peft"))  # a PEFT directory reads as an adapter
    assert meta["converted_from"] == {"peft_type": "PREFIX_TUNING", "prefix_projection": projection}
    assert meta["prefix"]["rope_theta"] == pytest.approx(hf.config.rope_theta)  # from the base's config.json
    (table,) = tensors.values()
    assert table.shape == (4, 2 * 2 * 2 * 16)
    net = get_pet_model(_base(seed=3), pet_config_from_metadata(meta))
    for name, p in net.parameters_and_names():
        if name in base:
            p.set_data(Tensor(base[name]))
    load_adapter(net, str(tmp_path / "peft"))
    diff = float(np.abs(net(Tensor(ids)).asnumpy() - peft_logits).max())
    print(f"\nPEFT PREFIX_TUNING (prefix_projection={projection}) -> MindSpore: logits diff {diff:.2e}")
    assert diff <= TOL


def test_prefix_file_round_trip_and_strict_load(tmp_path):
    net = _prefixed(PET_CONFIGS["ptuning2_mlp"])
    path = str(tmp_path / "a.ckpt")
    meta = save_adapter(net, path)
    tensors, read_meta = read_adapter(path)
    assert sorted(tensors) == sorted(n for n, p in net.parameters_and_names() if p.requires_grad)
    assert read_meta["pet_config"] == Ptuning2Config(**PET_CONFIGS["ptuning2_mlp"]).to_dict()
    assert read_meta["base_fingerprint"] == meta["base_fingerprint"]
    ids = _ids(2)
    other = get_pet_model(_base(), pet_config_from_metadata(read_meta))  # same base, another prefix
    assert np.abs(other(Tensor(ids)).asnumpy() - net(Tensor(ids)).asnumpy()).max() > 100 * TOL
    load_adapter(other, path)
    np.testing.assert_allclose(other(Tensor(ids)).asnumpy(), net(Tensor(ids)).asnumpy(), atol=1e-6)

    # a file without the MLP does not fit a network with it: refused, nothing assigned
    plain = _prefixed(PET_CONFIGS["ptuning2"])
    save_adapter(plain, str(tmp_path / "plain.ckpt"))
    before = numpy_params(other)
    with pytest.raises(ValueError, match="missing keys|shape mismatch"):
        load_adapter(other, str(tmp_path / "plain.ckpt"))
    assert all(np.array_equal(before[n], v) for n, v in numpy_params(other).items())
    with pytest.raises(ValueError, match="lora_alpha / use_rslora apply to LoRA"):
        export_peft(path, str(tmp_path / "peft"), lora_alpha=8)
    with pytest.raises(ValueError, match="cannot be merged into base weights"):
        merge_weights(numpy_params(_base()), path)


def test_cli_exports_and_imports_a_prefix(tmp_path, capsys):
    path = str(tmp_path / "a.safetensors")
    save_adapter(_prefixed(PET_CONFIGS["prefixtuning"]), path)
    assert main(["export-peft", "--adapter", path, "--out", str(tmp_path / "peft")]) == 0
    assert "PREFIX_TUNING, 2 virtual tokens, prefix_projection=True" in capsys.readouterr().out
    assert main(["import-peft", "--peft-dir", str(tmp_path / "peft"), "--out", str(tmp_path / "back.ckpt")]) == 0
    assert "ptuning2, pre_seq_len 2" in capsys.readouterr().out
