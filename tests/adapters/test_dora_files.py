"""DoRA magnitudes and PiSSA conversions in adapter files: save, merge into checkpoints, refusals."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindpet_lite.adapters import convert_weight_init, export_peft, merge_weights, read_adapter, save_adapter
from mindpet_lite.delta import LoRADense
from mindpet_lite.graph.freeze import freeze_delta
from mindpet_lite.pet import LoraConfig
from tests import reference as ref


class _TwoDora(nn.Cell):
    """fc1 (DoRA 8 -> 6), fc2 (DoRA 6 -> 4): random A, B and magnitudes off the row norms."""

    def __init__(self, use_dora=True):
        super().__init__()
        self.fc1 = LoRADense(8, 6, 2, 4, compute_dtype=ms.float32, use_dora=use_dora)
        self.fc2 = LoRADense(6, 4, 2, 4, compute_dtype=ms.float32, use_dora=use_dora)

    def construct(self, x):
        return self.fc2(self.fc1(x))


def _net(use_dora=True, seed=0):
    ms.set_seed(seed)
    net = _TwoDora(use_dora)
    rng = np.random.default_rng(seed)
    for name, p in net.parameters_and_names():
        if name.endswith("magnitude"):
            p.set_data(Tensor((p.asnumpy() * rng.uniform(0.8, 1.2, p.shape)).astype(np.float32)))
        elif "mindpet_delta_lora" in name:
            p.set_data(Tensor((0.3 * rng.standard_normal(p.shape)).astype(np.float32)))
    freeze_delta(net, "lora")
    return net


def test_save_holds_the_magnitudes_and_merge_matches_the_reference(tmp_path):
    net = _net()
    path = str(tmp_path / "a.safetensors")
    meta = save_adapter(net, path)
    assert meta["pet_config"]["use_dora"] is True
    tensors, _ = read_adapter(path)
    assert sorted(k for k in tensors if k.endswith("magnitude")) == ["fc1.mindpet_delta_lora_magnitude",
                                                                     "fc2.mindpet_delta_lora_magnitude"]
    base = {"fc1.weight": net.fc1.weight.asnumpy(), "fc2.weight": net.fc2.weight.asnumpy().T.copy(),
            "fc1.bias": net.fc1.bias.asnumpy() if net.fc1.has_bias else np.zeros(6, np.float32)}
    merged = merge_weights(base, path, layout="auto")  # fc2 stored [in, out]: the norms are still per output row
    for name, cell, transposed in (("fc1.weight", net.fc1, False), ("fc2.weight", net.fc2, True)):
        want = ref.dora_merged_weight(cell.weight.asnumpy(), cell.mindpet_delta_lora_a.asnumpy(),
                                      cell.mindpet_delta_lora_b.asnumpy(),
                                      cell.mindpet_delta_lora_magnitude.asnumpy(), 2.0)
        np.testing.assert_allclose(merged[name], want.T if transposed else want, rtol=1e-5, atol=1e-6)


def test_dora_checkpoint_unmerge_and_bad_magnitudes_are_refused(tmp_path):
    net = _net()
    path = str(tmp_path / "a.safetensors")
    save_adapter(net, path)
    tensors, meta = read_adapter(path)
    base = {"fc1.weight": net.fc1.weight.asnumpy(), "fc2.weight": net.fc2.weight.asnumpy()}
    with pytest.raises(ValueError, match="cannot unmerge a DoRA adapter from a checkpoint"):
        merge_weights(base, (tensors, meta), unmerge=True)
    bad = dict(tensors, **{"fc1.mindpet_delta_lora_magnitude": np.ones(5, np.float32)})
    with pytest.raises(ValueError, match=r"fc1 has a DoRA magnitude of shape \[5\]; expected \[6\]"):
        merge_weights(base, (bad, meta))
    lone = dict(tensors, **{"fc3.mindpet_delta_lora_magnitude": np.ones(4, np.float32)})
    with pytest.raises(ValueError, match="fc3 has a DoRA magnitude but no LoRA pair"):
        merge_weights(base, (lone, meta))
    no_mag = {k: v for k, v in tensors.items() if not k.endswith("magnitude")}
    with pytest.raises(ValueError, match="metadata says use_dora=True but it holds DoRA magnitudes for 0 of its 2"):
        export_peft((no_mag, meta), str(tmp_path / "peft"))


def test_save_refuses_a_config_that_contradicts_the_cells(tmp_path):
    net = _net()
    config = LoraConfig(lora_rank=2, lora_alpha=4, target_modules="fc1|fc2")
    with pytest.raises(ValueError, match="config.use_dora=False but fc1 has use_dora=True"):
        save_adapter(net, str(tmp_path / "a.ckpt"), config=config)
    assert not (tmp_path / "a.ckpt").exists()


def test_convert_weight_init_refuses_a_mix_and_keeps_plain_adapters():
    net = _net(use_dora=False)
    tensors = {"fc1.mindpet_delta_lora_a": net.fc1.mindpet_delta_lora_a.asnumpy()}
    assert convert_weight_init(net, tensors, None) == (tensors, None)  # nothing started from W
    net.fc1.init_from_weight("olora")
    with pytest.raises(ValueError, match="1 LoRA layers started from their weights .* and 1 did not"):
        convert_weight_init(net, tensors, None)


def test_pissa_rslora_conversion_keeps_the_scaling(tmp_path):
    ms.set_seed(0)
    net = _TwoDora(use_dora=False)
    config = LoraConfig(lora_rank=2, lora_alpha=4, use_rslora=False, target_modules="fc1|fc2",
                        init_lora_weights="pissa")
    for cell in (net.fc1, net.fc2):
        cell.init_from_weight("pissa")
    freeze_delta(net, "lora")
    meta = save_adapter(net, str(tmp_path / "a.ckpt"), config=config)
    assert (meta["pet_config"]["lora_rank"], meta["pet_config"]["lora_alpha"], meta["scaling"]) == (4, 8, 2.0)
    assert meta["converted_from"] == {"init_lora_weights": "pissa", "lora_rank": 2, "lora_alpha": 4}
    rs = LoraConfig(lora_rank=2, lora_alpha=4, use_rslora=True, target_modules="fc1|fc2")
    _, converted = convert_weight_init(net, {"fc1.mindpet_delta_lora_a": np.zeros((2, 8), np.float32),
                                             "fc1.mindpet_delta_lora_b": np.zeros((6, 2), np.float32),
                                             "fc2.mindpet_delta_lora_a": np.zeros((2, 6), np.float32),
                                             "fc2.mindpet_delta_lora_b": np.zeros((4, 2), np.float32)}, rs)
    assert converted.lora_rank == 4 and converted.scaling == pytest.approx(rs.scaling)
