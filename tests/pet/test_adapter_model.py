"""pet_type adapter / low_rank_adapter on the built-in Llama: config keys (typos name the closest key),
targets by LoRA's rule, the base weights reused, zero effect at the start, freezing, a few training
steps lower the loss, and the adapter file round trip (save, rebuild from its metadata, load: same logits)."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from mindpet_lite.adapters import export_peft, load_adapter, merge_adapter, pet_config_from_metadata, save_adapter
from mindpet_lite.cli import main as cli_main
from mindpet_lite.delta import AdapterDense, LowRankAdapterDense
from mindpet_lite.models.llama import LlamaForCausalLM
from mindpet_lite.pet import AdapterConfig, LowRankAdapterConfig, get_pet_model, load_pet_config

TINY = dict(hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, vocab_size=64, seq_length=8,
            intermediate_size=48)
CONFIGS = {"adapter": dict(pet_type="adapter", target_modules=".*wo|.*w2", bottleneck_size=8),
           "low_rank_adapter": dict(pet_type="low_rank_adapter", target_modules=".*wo|.*w2", reduction_factor=4,
                                    low_rank_size=2)}
CELLS = {"adapter": AdapterDense, "low_rank_adapter": LowRankAdapterDense}
IDS = np.random.default_rng(0).integers(0, 64, (2, 9)).astype(np.int32)


def llama(seed=0):
    ms.set_seed(seed)
    return LlamaForCausalLM(dict(TINY))


def logits(net):
    out = net(Tensor(IDS[:, :-1]))
    return (out[0] if isinstance(out, tuple) else out).asnumpy()


@pytest.fixture(scope="module")
def base_logits():
    return logits(llama())


@pytest.mark.parametrize("pet_type", list(CONFIGS))
def test_targets_reuse_the_base_weights_start_at_zero_effect_and_freeze(pet_type, base_logits):
    net = llama()
    weights = {path: cell.weight for path, cell in net.cells_and_names() if path.endswith((".wo", ".w2"))}
    get_pet_model(net, CONFIGS[pet_type])
    adapted = {path: cell for path, cell in net.cells_and_names() if isinstance(cell, CELLS[pet_type])}
    assert sorted(adapted) == sorted(weights) == [f"model.layers.{i}.{m}" for i in range(2)
                                                  for m in ("attention.wo", "feed_forward.w2")]
    assert all(adapted[path].weight is weights[path] for path in weights)  # the base Parameter, no copy
    np.testing.assert_allclose(logits(net), base_logits, rtol=1e-6, atol=1e-6)  # up-projection starts at zero
    trainable = [p.name for p in net.trainable_params()]
    assert trainable and all(f"mindpet_delta_{pet_type}" in name for name in trainable)
    assert all(name.startswith(tuple(weights)) for name in trainable)  # named after their layer
    assert net.pet_summary["num_replaced"] == 4 and 0 < net.pet_summary["percent"] < 100


def test_config_keys_are_checked_with_the_closest_key():
    assert isinstance(load_pet_config(CONFIGS["adapter"]), AdapterConfig)
    assert isinstance(load_pet_config(CONFIGS["low_rank_adapter"]), LowRankAdapterConfig)
    with pytest.raises(ValueError, match="did you mean 'bottleneck_size'"):
        load_pet_config(dict(CONFIGS["adapter"], bottleneck_sise=8))
    with pytest.raises(ValueError, match="did you mean 'low_rank_adapter'"):
        load_pet_config(dict(CONFIGS["low_rank_adapter"], pet_type="low_rank_adaptor"))
    with pytest.raises(ValueError, match="bottleneck_size must be an int > 0"):
        load_pet_config(dict(CONFIGS["adapter"], bottleneck_size=0))
    with pytest.raises(ValueError, match="non_linearity"):
        load_pet_config(dict(CONFIGS["adapter"], non_linearity="gleu"))
    with pytest.raises(ValueError, match="target_modules is missing"):
        load_pet_config({"pet_type": "adapter"})
    for field in AdapterConfig.__dataclass_fields__.values():
        assert field.metadata.get("help"), field.name


def test_a_refused_config_leaves_the_network_unchanged():
    net = llama()
    before = [(path, type(cell)) for path, cell in net.cells_and_names()]
    with pytest.raises(ValueError, match="matched no layer"):
        get_pet_model(net, dict(CONFIGS["adapter"], target_modules="nothing"))
    with pytest.raises(ValueError, match="reduction_factor"):  # 48 // 64: an empty bottleneck
        get_pet_model(net, dict(CONFIGS["low_rank_adapter"], target_modules=".*w1", reduction_factor=64))
    assert [(path, type(cell)) for path, cell in net.cells_and_names()] == before
    assert all(p.requires_grad for p in net.get_parameters() if "input_tokens" not in p.name)


class _Step(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.step = nn.TrainOneStepCell(net, nn.Adam(net.trainable_params(), learning_rate=1e-2))

    def construct(self, ids, labels):
        return self.step(ids, labels)


@pytest.mark.parametrize("pet_type", list(CONFIGS))
def test_training_lowers_the_loss_and_the_file_round_trips(pet_type, tmp_path):
    net = llama()
    get_pet_model(net, CONFIGS[pet_type])
    frozen = {p.name: p.asnumpy().copy() for p in net.get_parameters() if not p.requires_grad}
    step = _Step(net)
    ids, labels = Tensor(IDS[:, :-1]), Tensor(IDS[:, 1:])
    losses = [float(step(ids, labels).asnumpy()) for _ in range(6)]
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(np.array_equal(frozen[p.name], p.asnumpy()) for p in net.get_parameters() if p.name in frozen)

    path = str(tmp_path / "adapter.safetensors")
    meta = save_adapter(net, path)
    assert meta["pet_config"]["pet_type"] == pet_type and meta["kind"] == pet_type
    again = llama()  # the same base (seed), a fresh adapter
    get_pet_model(again, pet_config_from_metadata(meta))
    assert not np.allclose(logits(again), logits(net))
    load_adapter(again, path)
    np.testing.assert_allclose(logits(again), logits(net), rtol=1e-6, atol=1e-6)

    with pytest.raises(ValueError, match="HF PEFT has no"):
        export_peft(path, str(tmp_path / "peft"))
    assert cli_main(["export-peft", "--adapter", path, "--out", str(tmp_path / "peft")]) == 2  # bad input
    assert not (tmp_path / "peft").exists()
    with pytest.raises(ValueError, match="non-linearity"):
        merge_adapter({n: p.asnumpy() for n, p in llama().parameters_and_names()}, path)
    bare = llama()
    get_pet_model(bare, dict(CONFIGS[pet_type], target_modules=".*wo"))  # fewer adapters than the file
    with pytest.raises(ValueError, match="unexpected keys"):
        load_adapter(bare, path)
