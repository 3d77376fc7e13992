"""load_adapter onto a network without LoRA cells builds what the file's pet_config describes (as PEFT's
PeftModel.from_pretrained(base, path) does): each kind of file gives the logits of get_pet_model +
load_adapter; refusals leave the plain network as it was."""
import os

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from mindpet_lite.adapters import export_peft, load_adapter, pet_config_from_metadata, read_adapter, save_adapter
from mindpet_lite.adapters.metadata import write_adapter_file
from mindpet_lite.delta.lora import LoRADense
from mindpet_lite.pet import get_pet_model
from tests.adapters.conftest import randomize, tiny_llama

IDS = Tensor(np.array([[5, 9, 3, 17, 22, 8, 1, 2]], np.int32))
KINDS = {
    "lora": dict(lora_rank=4, lora_alpha=8, target_modules=".*wq|.*wv|.*w2"),
    "dora_patterns": dict(lora_rank=4, lora_alpha=8, target_modules=".*wq|.*wv|.*w1", use_dora=True,
                          rank_pattern={"wq": 2}, alpha_pattern={r"layers\.1\.attention\.wv": 12},
                          layers_to_transform=[1], layers_pattern="layers"),
    "modules_to_save": dict(lora_rank=2, lora_alpha=4, target_modules=".*wk", modules_to_save=["lm_head"]),
}


def _logits(net):
    net.set_train(False)
    return net(IDS).asnumpy()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{kind: adapter path} saved from a trained-looking network of the tiny Llama (seed 0), and a
    PEFT directory exported from the LoRA one."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    root = tmp_path_factory.mktemp("plain")
    out = {}
    for kind, config in KINDS.items():
        net = tiny_llama(lora=False)
        get_pet_model(net, dict(config, lora_dropout=0.0))
        randomize(net, seed=len(out) + 1, names=("mindpet_delta_lora", "lm_head"))
        out[kind] = str(root / f"{kind}.safetensors")
        save_adapter(net, out[kind])
    out["peft_dir"] = str(root / "peft")
    export_peft(out["lora"], out["peft_dir"])
    return out


@pytest.fixture(scope="module")
def base_logits():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return _logits(tiny_llama(lora=False))


@pytest.mark.parametrize("kind", sorted(KINDS) + ["peft_dir"])
def test_a_plain_network_builds_the_files_adapter_then_loads_it(files, base_logits, kind):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    path = files[kind]
    reference = tiny_llama(lora=False)
    get_pet_model(reference, pet_config_from_metadata(read_adapter(path)[1]))
    load_adapter(reference, path)
    want = _logits(reference)

    plain = tiny_llama(lora=False)
    meta = load_adapter(plain, path)
    got = _logits(plain)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.abs(want - base_logits).max() > 1e-3  # the adapter does something
    cells = {p: c for p, c in plain.cells_and_names() if isinstance(c, LoRADense)}
    assert sorted(cells) == sorted(p for p, c in reference.cells_and_names() if isinstance(c, LoRADense))
    assert plain.pet_config.to_dict() == pet_config_from_metadata(meta).to_dict()
    if kind == "dora_patterns":
        assert sorted(cells) == ["model.layers.1.attention.wq", "model.layers.1.attention.wv",
                                 "model.layers.1.feed_forward.w1"]
        assert cells["model.layers.1.attention.wq"].lora_rank == 2 and cells["model.layers.1.attention.wq"].use_dora


def _state(net):
    return {n: (p.asnumpy().copy(), p.requires_grad) for n, p in net.parameters_and_names()}


def _assert_unchanged(net, before):
    after = _state(net)
    assert sorted(after) == sorted(before)
    for name, (value, grad) in before.items():
        np.testing.assert_array_equal(after[name][0], value, err_msg=name)
        assert after[name][1] == grad, name
    assert not any(isinstance(c, LoRADense) for _, c in net.cells_and_names())
    assert getattr(net, "pet_config", None) is None


def test_refusals_leave_the_plain_network_unchanged(files, tmp_path):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    plain = tiny_llama(lora=False)
    before = _state(plain)
    tensors, meta = read_adapter(files["lora"])
    other = tiny_llama(lora=False, vocab_size=96)
    before_other = _state(other)
    with pytest.raises(ValueError, match="saved from another base model"):
        load_adapter(other, files["lora"])
    _assert_unchanged(other, before_other)

    wrong = dict(tensors)
    key = next(k for k in wrong if k.endswith("wq.mindpet_delta_lora_a"))
    wrong[key] = np.zeros((3, wrong[key].shape[1]), np.float32)
    bad_shape = str(tmp_path / "bad_shape.safetensors")
    write_adapter_file(wrong, bad_shape, meta)
    with pytest.raises(ValueError, match=f"shape mismatch.*{key}"):
        load_adapter(plain, bad_shape)
    _assert_unchanged(plain, before)

    nan = dict(tensors, **{key: np.full_like(tensors[key], np.nan)})
    write_adapter_file(nan, str(tmp_path / "nan.safetensors"), meta)
    with pytest.raises(ValueError, match="non-finite|NaN"):
        load_adapter(plain, str(tmp_path / "nan.safetensors"))
    _assert_unchanged(plain, before)

    with pytest.raises(ValueError, match="adapter_name must be a letter"):
        load_adapter(plain, files["lora"], adapter_name="1x")
    _assert_unchanged(plain, before)
    assert os.path.isfile(files["lora"])


def test_the_first_adapter_after_a_named_one_is_refused_with_the_reason(files):
    """A named adapter on a plain network builds cells whose first adapter is a placeholder: a first
    adapter loaded after it is refused, naming the adapter and the order that works, nothing changed."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = tiny_llama(lora=False)
    load_adapter(net, files["lora"], adapter_name="b")
    before = _state(net)
    with pytest.raises(ValueError, match=r"built for the named adapter\(s\) \['b'\] and hold no first adapter "
                                         r"\('default'\); load the first adapter before the named ones"):
        load_adapter(net, files["modules_to_save"])
    after = _state(net)
    assert sorted(after) == sorted(before)
    for name, (value, grad) in before.items():
        np.testing.assert_array_equal(after[name][0], value, err_msg=name)
        assert after[name][1] == grad, name
