"""Named adapters of one LoRADense against the numpy reference of tests/reference.py: each adapter alone,
a mixed batch row by row, switching, deleting, the parameter names, and every refusal."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from mindpet_lite.delta.lora import LoRADense
from mindpet_lite.graph.adapters import adapter_rows, disable_adapter, list_adapters, set_adapter
from mindpet_lite.graph.freeze import freeze_delta, get_adapter_params
from mindpet_lite.adapters.metadata import base_fingerprint
from tests.reference import lora_forward, lora_scaling

ms.set_device("CPU")
IN, OUT = 8, 6


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)


def _arr(rng, *shape):
    return (0.4 * rng.standard_normal(shape)).astype(np.float32)


def _cell(seed=0):
    """default: rank 4, alpha 8; 'x': rank 2, alpha 3; 'y': rank 3, alpha 4, rsLoRA."""
    rng = np.random.default_rng(seed)
    factors = {"default": (_arr(rng, 4, IN), _arr(rng, OUT, 4), lora_scaling(8, 4)),
               "x": (_arr(rng, 2, IN), _arr(rng, OUT, 2), lora_scaling(3, 2)),
               "y": (_arr(rng, 3, IN), _arr(rng, OUT, 3), lora_scaling(4, 3, True))}
    a, b, _ = factors["default"]
    cell = LoRADense(IN, OUT, 4, 8, lora_a_init=Tensor(a), lora_b_init=Tensor(b), compute_dtype=ms.float32,
                     weight_init=Tensor(_arr(rng, OUT, IN)), bias_init=Tensor(_arr(rng, OUT)))
    cell.add_adapter("x", 2, 3, Tensor(factors["x"][0]), Tensor(factors["x"][1]))
    cell.add_adapter("y", 3, 4, Tensor(factors["y"][0]), Tensor(factors["y"][1]), use_rslora=True)
    cell.set_train(False)
    return cell, factors


def _ref(cell, factors, x, name):
    w, bias = cell.weight.asnumpy(), cell.bias.asnumpy()
    if name is None:
        return x.astype(np.float64) @ w.T.astype(np.float64) + bias
    a, b, s = factors[name]
    return lora_forward(x, w, bias, a, b, s)


def test_parameter_names_shapes_and_listing():
    cell, _ = _cell()
    shapes = {n: tuple(p.shape) for n, p in cell.parameters_and_names()}
    assert shapes == {"weight": (OUT, IN), "bias": (OUT,), "mindpet_delta_lora_a": (4, IN),
                      "mindpet_delta_lora_b": (OUT, 4), "mindpet_delta_lora_a__x": (2, IN),
                      "mindpet_delta_lora_b__x": (OUT, 2), "mindpet_delta_lora_a__y": (3, IN),
                      "mindpet_delta_lora_b__y": (OUT, 3)}
    assert cell.adapter_names() == ["default", "x", "y"] and list_adapters(cell) == ["default", "x", "y"]
    assert cell.adapter_spec("y")[:3] == (3, 4, True)


@pytest.mark.parametrize("rows", [3, 40])  # the branch form and the folded form (many rows)
def test_each_active_adapter_equals_the_reference(rows):
    cell, factors = _cell()
    x = np.random.default_rng(1).standard_normal((rows, IN)).astype(np.float32)
    for name in ["x", "default", None, "y", "x"]:
        cell.set_active_adapter(name)
        np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), _ref(cell, factors, x, name), atol=1e-5, rtol=0)


def test_mixed_rows_equal_each_rows_own_adapter():
    cell, factors = _cell()
    x = np.random.default_rng(2).standard_normal((5, 3, IN)).astype(np.float32)
    # the network has a fourth adapter 'z' this cell does not hold: its row sees the base layer
    names = ["y", "__base__", "default", "z", "x"]
    columns = ["default", "x", "y", "z"]
    cell.set_mix_columns(columns)
    onehot = np.zeros((5, 4), np.float32)
    for i, name in enumerate(names):
        if name != "__base__":
            onehot[i, columns.index(name)] = 1
    out = cell(Tensor(x), Tensor(onehot)).asnumpy()
    for i, name in enumerate(names):
        want = _ref(cell, factors, x[i], None if name in ("__base__", "z") else name)
        np.testing.assert_allclose(out[i], want, atol=1e-5, rtol=0)


def test_switching_back_and_forth_equals_a_fresh_cell():
    cell, _ = _cell()
    x = Tensor(np.random.default_rng(3).standard_normal((4, IN)).astype(np.float32))
    for name in ["y", "default", "x", "y", None, "x"]:
        cell.set_active_adapter(name)
        fresh, _ = _cell()
        fresh.set_active_adapter(name)
        np.testing.assert_array_equal(cell(x).asnumpy(), fresh(x).asnumpy())


def test_delete_adapter_falls_back_to_the_first():
    cell, factors = _cell()
    x = np.random.default_rng(4).standard_normal((3, IN)).astype(np.float32)
    cell.set_active_adapter("x")
    cell.delete_adapter("x")
    assert cell.adapter_names() == ["default", "y"] and cell.active_adapter == "default"
    assert "mindpet_delta_lora_a__x" not in dict(cell.parameters_and_names())
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), _ref(cell, factors, x, "default"), atol=1e-5, rtol=0)


def test_disable_adapter_context_restores():
    cell, factors = _cell()
    x = np.random.default_rng(5).standard_normal((3, IN)).astype(np.float32)
    set_adapter(cell, "y")
    with disable_adapter(cell):
        np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), _ref(cell, factors, x, None), atol=1e-5, rtol=0)
    assert cell.active_adapter == "y"
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), _ref(cell, factors, x, "y"), atol=1e-5, rtol=0)


def test_freezing_fingerprint_and_first_adapter_params():
    cell, _ = _cell()
    plain = LoRADense(IN, OUT, 4, 8, compute_dtype=ms.float32)
    assert base_fingerprint(cell) == base_fingerprint(plain)  # named adapters are not the base
    assert sorted(get_adapter_params(cell)) == ["mindpet_delta_lora_a", "mindpet_delta_lora_b"]
    freeze_delta(cell, "lora")
    trainable = sorted(n for n, p in cell.parameters_and_names() if p.requires_grad)
    assert trainable == sorted(n for n, _ in cell.parameters_and_names() if "mindpet_delta_lora_" in n)


def test_refusals_name_the_problem_and_change_nothing():
    cell, _ = _cell()
    before = {n: p.asnumpy().copy() for n, p in cell.parameters_and_names()}
    with pytest.raises(ValueError, match="'x' is already used"):
        cell.add_adapter("x", 2, 3)
    with pytest.raises(ValueError, match="first adapter's"):
        cell.add_adapter("default", 2, 3)
    for bad in ["__base__", "a.b", "", "9x", 3]:
        with pytest.raises(ValueError, match="adapter_name must be a letter"):
            cell.add_adapter(bad, 2, 3)
    with pytest.raises(ValueError, match="lora_rank"):
        cell.add_adapter("w", 0, 3)
    with pytest.raises(ValueError, match=r"unknown adapter 'nope'.*\['default', 'x', 'y'\]"):
        cell.set_active_adapter("nope")
    with pytest.raises(ValueError, match="cannot be deleted"):
        cell.delete_adapter("default")
    with pytest.raises(ValueError, match=r"unknown adapter 'nope'"):
        set_adapter(cell, "nope")
    with pytest.raises(ValueError, match=r"one name per row \(2 rows\), got 3"):
        adapter_rows(cell, ["x", "y", "x"], 2)
    with pytest.raises(ValueError, match=r"adapter_names\[1\]: unknown adapter 'q'"):
        adapter_rows(cell, ["x", "q"], 2)
    cell.merge()
    with pytest.raises(ValueError, match="merged"):
        cell.set_active_adapter("x")
    with pytest.raises(ValueError, match="merged"):
        set_adapter(cell, "y")
    with pytest.raises(ValueError, match="unmerge them to mix"):
        adapter_rows(cell, ["x", "__base__"], 2)
    with pytest.raises(ValueError, match="merged"):
        with disable_adapter(cell):
            pass
    cell.unmerge()
    after = {n: p.asnumpy() for n, p in cell.parameters_and_names()}
    assert sorted(after) == sorted(before) and cell.adapter_names() == ["default", "x", "y"]
    for n, v in before.items():
        np.testing.assert_allclose(after[n], v, atol=1e-6)
