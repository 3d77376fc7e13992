"""delta.PrefixEncoder (MindPet's P-Tuning v2 cell): forward and gradients against numpy, both modes;
MindPet's parameter names; bad arguments name the argument."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor

from mindpet_lite.delta import PrefixEncoder, PrefixTuningEncoder
from tests.reference import prefix_layers

T, L, N, D = 3, 2, 2, 4
ARGS = dict(pre_seq_len=T, num_layers=L, num_heads=N, kv_channels=D, projection_dim=5, dropout_prob=0.0)


def _params(cell, seed=0):
    rng = np.random.default_rng(seed)
    for _, p in cell.parameters_and_names():
        p.set_data(Tensor(rng.standard_normal(p.shape).astype(np.float32)))
    return {name.split("ptuning2_")[-1]: p.asnumpy().astype(np.float64) for name, p in cell.parameters_and_names()}


def _expected(p, projection):
    mlp = (p["dense_in.weight"], p["dense_in.bias"], p["dense_out.weight"], p["dense_out.bias"]) if projection else ()
    return prefix_layers(p["embedding.embedding_table"], L, N, D, *mlp)


@pytest.mark.parametrize("projection", [False, True])
def test_forward_matches_numpy(mode, projection):
    cell = PrefixEncoder(prefix_projection=projection, **ARGS)
    p = _params(cell)
    out = cell(2, ms.float32)
    assert len(out) == L
    for layer, (keys, values) in enumerate(_expected(p, projection)):
        got = out[layer].asnumpy()
        assert got.shape == (2, 2, N, T, D)  # (key / value, batch, heads, prefix, head size)
        for b in range(2):
            # float32, and MindSpore's CPU tanh is good to ~1e-5
            np.testing.assert_allclose(got[0, b], keys, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(got[1, b], values, rtol=1e-4, atol=1e-4)
    assert cell(1)[0].dtype == ms.float16  # MindPet's default dtype


def test_gradient_of_the_table_matches_numpy(mode):
    cell = PrefixEncoder(prefix_projection=False, **ARGS)
    _params(cell)
    g = np.random.default_rng(1).standard_normal((L, 2, 3, N, T, D)).astype(np.float32)
    gt = Tensor(g)

    def loss(dummy):  # noqa: ARG001  # sum(g * out): d/d table = g summed over the batch, in row layout
        out = cell(3, ms.float32)
        total = 0.0
        for layer in range(L):
            total = total + (out[layer] * gt[layer]).sum()
        return total

    grad = ms.grad(loss, grad_position=None, weights=cell.trainable_params())(Tensor(0.0))[0].asnumpy()
    # reference: row t = [layer, k/v, head, D]
    want = g.sum(axis=2).transpose(3, 0, 1, 2, 4).reshape(T, -1)
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
    cell = PrefixEncoder(prefix_projection=False, **{**ARGS, "dropout_prob": 0.5})
    _params(cell)
    cell.set_train(False)
    a, b = cell(2, ms.float32)[0].asnumpy(), cell(2, ms.float32)[0].asnumpy()
    np.testing.assert_array_equal(a, b)
    cell.set_train(True)
    dropped = cell(2, ms.float32)[0].asnumpy()
    assert (dropped == 0).mean() > 0.2  # about half the values zeroed, the rest scaled by 2
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], 2 * a[kept], rtol=1e-5)


def test_mindpet_names_out_perm_and_shard():
    cell = PrefixEncoder(prefix_projection=True, **ARGS)
    assert [n for n, _ in cell.parameters_and_names()] == [
        "mindpet_delta_ptuning2_embedding.embedding_table", "mindpet_delta_ptuning2_dense_in.weight",
        "mindpet_delta_ptuning2_dense_in.bias", "mindpet_delta_ptuning2_dense_out.weight",
        "mindpet_delta_ptuning2_dense_out.bias"]
    assert [n for n, _ in PrefixTuningEncoder(prefix_projection=False, **ARGS).parameters_and_names()] == [
        "mindpet_delta_prefixtuning_embedding.embedding_table"]
    assert cell.shard(1, 1) is cell  # strategies set (used under semi-auto parallel only)
    other = PrefixEncoder(prefix_projection=False, out_perm=(2, 0, 1, 3, 4), **ARGS)
    assert other(2, ms.float32)[0].shape == (2, 2, T, N, D)


@pytest.mark.parametrize("key, value, match", [
    ("pre_seq_len", 0, "pre_seq_len"), ("num_layers", 1.5, "num_layers"), ("num_heads", True, "num_heads"),
    ("kv_channels", -1, "kv_channels"), ("projection_dim", 0, "projection_dim"),
    ("dropout_prob", 1.0, "dropout_prob"), ("dropout_prob", float("nan"), "dropout_prob"),
    ("dropout_prob", 0, "dropout_prob"), ("prefix_projection", "yes", "prefix_projection"),
    ("out_perm", (0, 1, 2, 3, 4), "out_perm"), ("out_perm", (2, 0, 1, 3), "out_perm"),
])
def test_bad_arguments_name_the_argument(key, value, match):
    args = {**ARGS, "prefix_projection": True, key: value}
    with pytest.raises((TypeError, ValueError), match=match):
        PrefixEncoder(**args)
    with pytest.raises(ValueError, match="data_parallel"):
        PrefixEncoder(prefix_projection=False, **ARGS).shard(0, 1)
