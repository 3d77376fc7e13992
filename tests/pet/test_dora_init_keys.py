"""pet_config keys use_dora and init_lora_weights: validation, and what get_pet_model builds from them."""
import numpy as np
import pytest
import yaml
from mindspore import Tensor

from mindpet_lite.pet import LoraConfig, get_pet_model
from tests.adapters.conftest import tiny_llama
from tests.pet.test_config import TARGET, make


def test_defaults_and_round_trip():
    cfg = make()
    assert cfg.use_dora is False and cfg.init_lora_weights is True and cfg.weight_init is None
    cfg = make(use_dora=True, init_lora_weights="pissa_niter_4")
    assert cfg.weight_init == ("pissa", 4)
    assert LoraConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("typo, hint", [("use_dorra", "use_dora"), ("init_lora_weight", "init_lora_weights")])
def test_typos_name_the_key(typo, hint):
    with pytest.raises(ValueError, match=rf"unknown key '{typo}'; did you mean '{hint}'\?"):
        LoraConfig.from_dict({"target_modules": TARGET, typo: True})


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_use_dora_bad_value(value):
    with pytest.raises(TypeError, match=r"use_dora must be a bool, got"):
        make(use_dora=value)


@pytest.mark.parametrize("value", [False, "Gaussian", "pissa_niter_", "pissa_niter_-1", "loftq", 1, None])
def test_init_lora_weights_bad_value_lists_the_allowed(value):
    with pytest.raises(ValueError) as err:
        make(init_lora_weights=value)
    text = str(err.value)
    assert text.startswith("init_lora_weights must be one of True, 'gaussian', 'pissa', 'pissa_niter_<N>', 'olora'")
    assert repr(value) in text or str(value) in text


def test_init_lora_weights_conflicts_with_explicit_factor_inits():
    with pytest.raises(ValueError, match=r"lora_a_init='he_uniform' \(str\) is set but init_lora_weights='pissa'"):
        make(init_lora_weights="pissa", lora_a_init="he_uniform")
    assert make(init_lora_weights=True, lora_a_init="he_uniform").lora_a_init == "he_uniform"


def test_keys_from_yaml(tmp_path):
    path = tmp_path / "pet.yaml"
    path.write_text(yaml.safe_dump({"pet_config": {"target_modules": TARGET, "use_dora": True,
                                                   "init_lora_weights": "olora"}}))
    cfg = LoraConfig.from_yaml(str(path))
    assert cfg.use_dora and cfg.weight_init == ("olora", None)


def _logits(net, seed=0):
    ids = np.random.default_rng(seed).integers(0, 128, (2, 10)).astype(np.int32)
    return net(Tensor(ids)).asnumpy()


def test_get_pet_model_builds_dora_layers():
    net = tiny_llama(lora=False)
    base = _logits(net)
    get_pet_model(net, dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGET, use_dora=True))
    names = [n for n, p in net.parameters_and_names() if p.requires_grad]
    assert "model.layers.0.attention.wq.mindpet_delta_lora_magnitude" in names
    assert sum(n.endswith("mindpet_delta_lora_magnitude") for n in names) == 8
    wq = net.model.layers[0].attention.wq
    np.testing.assert_allclose(wq.mindpet_delta_lora_magnitude.asnumpy(), np.linalg.norm(wq.weight.asnumpy(), axis=1),
                               rtol=1e-6)
    np.testing.assert_allclose(_logits(net), base, atol=1e-5)  # B = 0 and m = ‖W‖: the base function


def test_gaussian_init_is_peft_s():
    net = tiny_llama(lora=False)
    get_pet_model(net, dict(lora_rank=8, lora_alpha=8, lora_dropout=0.0, target_modules=".*w1|.*w3",
                            init_lora_weights="gaussian"))
    a = np.concatenate([c.mindpet_delta_lora_a.asnumpy().ravel() for n, c in net.cells_and_names()
                        if n.endswith(("w1", "w3"))])
    assert abs(a.std() - 1 / 8) < 0.01 and abs(a.mean()) < 0.01  # 4096 draws of N(0, (1/8)^2)
    assert all(not c.mindpet_delta_lora_b.asnumpy().any() for n, c in net.cells_and_names() if n.endswith("w1"))


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2", "olora"])
def test_weight_inits_keep_the_logits_and_mutate_the_base(init):
    net = tiny_llama(lora=False)
    base = _logits(net)
    w = net.model.layers[1].attention.wv.weight.asnumpy().copy()
    get_pet_model(net, dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGET,
                            init_lora_weights=init, use_dora=init == "olora"))
    wv = net.model.layers[1].attention.wv
    assert wv.lora_init_factors is not None
    assert np.abs(wv.weight.asnumpy() - w).max() > 1e-3  # the base keeps the residual only
    np.testing.assert_allclose(_logits(net), base, atol=1e-4)


def test_weight_init_error_leaves_the_network_unchanged():
    net = tiny_llama(lora=False)
    before = {n: p.asnumpy().copy() for n, p in net.parameters_and_names()}
    with pytest.raises(ValueError, match=r"needs lora_rank <= min\(in, out\) of every target; "
                                         r"model.layers.0.attention.wk is 64 -> 32, lora_rank=40"):
        get_pet_model(net, dict(lora_rank=40, lora_alpha=8, target_modules=TARGET, init_lora_weights="pissa"))
    for name, p in net.parameters_and_names():
        assert np.array_equal(p.asnumpy(), before[name]), name
