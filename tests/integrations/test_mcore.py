"""LoRA on MindFormers' mcore ColumnParallelLinear / RowParallelLinear (integrations/mcore.py): tiny
Qwen3 and mcore GPT models of MindFormers 1.9 built on CPU, the layers against numpy and against
MindFormers' own ColumnParallelLinearWithLoRA / RowParallelLinearWithLoRA, the tensor-parallel split
simulated in numpy, adapters saved and loaded, MindFormers' LoraAdapter building our cells."""
import copy
import types

import numpy as np
import pytest
from safetensors import safe_open

import mindspore as ms
from mindspore import Tensor, nn, ops

from mindpet_lite.adapters import export_peft, load_adapter, merge_checkpoint, save_adapter
from mindpet_lite.delta.lora import LoRADense
from mindpet_lite.graph import set_adapter
from mindpet_lite.integrations import mcore
from mindpet_lite.integrations.mcore import (CPU_PARALLEL_ERROR, LoRAColumnParallelLinear, LoRARowParallelLinear,
                                             tensor_parallel_strategies)
from mindpet_lite.integrations.mindformers import use_mindpet_lite
from mindpet_lite.pet import get_pet_model
from tests.reference import (dora_forward, lora_forward, lora_grads, mcore_split_qkv, merged_weight,
                             tp_lora_forward)

TARGETS = ".*linear_qkv|.*linear_proj|.*linear_fc1|.*linear_fc2"
PET = {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": TARGETS}
NUM_LAYERS = 2
KINDS = {"linear_qkv": "column", "linear_fc1": "column", "linear_proj": "row", "linear_fc2": "row"}


@pytest.fixture(scope="module")
def mf():
    """mindformers' mcore pieces, imported in the fixture (importing writes ./output/log), with its
    context switched to the mcore models (use_legacy=False) for this module and restored after."""
    pytest.importorskip("mindformers")
    # pylint: disable=import-outside-toplevel
    from mindformers.core.context.build_context import MFContextOperator, build_mf_context
    from mindformers.models.qwen3.configuration_qwen3 import Qwen3Config
    from mindformers.models.qwen3.modeling_qwen3_train import TrainingQwen3ForCausalLM
    from mindformers.parallel_core.training_graph.base_models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from mindformers.parallel_core.training_graph.base_models.gpt.gpt_model import GPTModel
    from mindformers.parallel_core.training_graph.tensor_parallel import layers, lora_layers
    from mindformers.parallel_core.transformer_config import TransformerConfig
    from mindformers.parallel_core.utils.init_method import init_method_normal
    from mindformers.pet import get_pet_model as mf_get_pet_model
    from mindformers.pet.tuners import lora_adapter
    before = MFContextOperator.get_mf_ctx_instance()
    old_legacy = getattr(before, "use_legacy", None) if before is not None else None
    if before is None:
        build_mf_context({"use_legacy": False, "context": {"mode": 0, "device_target": "CPU"}, "parallel": {}})
    else:
        before.use_legacy = False
    yield types.SimpleNamespace(Qwen3Config=Qwen3Config, Qwen3=TrainingQwen3ForCausalLM, GPTModel=GPTModel,
                                gpt_spec=get_gpt_layer_local_spec, layers=layers, lora_layers=lora_layers,
                                TransformerConfig=TransformerConfig, init=init_method_normal,
                                lora_adapter=lora_adapter, get_pet_model=mf_get_pet_model)
    if before is None:
        MFContextOperator.reset_instance()
    else:
        before.use_legacy = old_legacy


@pytest.fixture(autouse=True)
def graph_mode():
    """Graph mode for these tests (compiled once per cell), the mode before put back after."""
    before = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=before)


FLOAT32 = dict(compute_dtype="float32", params_dtype="float32", layernorm_compute_dtype="float32",
               softmax_compute_dtype="float32", rotary_dtype="float32", hidden_dropout=0.0)


def tiny_qwen3(mf):
    ms.set_seed(0)
    cfg = mf.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=NUM_LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=32,
                         seq_length=16, use_flash_attention=False, **FLOAT32)
    return mf.Qwen3(cfg)


def tiny_gpt(mf):
    """The mcore GPT with biases (linear_proj / fc1 / fc2 return theirs: skip_bias_add) and the output
    layer tied to the embedding (skip_weight_param_allocation)."""
    ms.set_seed(0)
    cfg = mf.TransformerConfig(num_layers=NUM_LAYERS, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                               ffn_hidden_size=48, vocab_size=64, seq_length=16, add_bias_linear=True,
                               gated_linear_unit=True, hidden_act="silu", normalization="RMSNorm",
                               position_embedding_type="rope", **FLOAT32)
    return mf.GPTModel(config=cfg, transformer_layer_spec=mf.gpt_spec(), vocab_size=64, max_sequence_length=16,
                       position_embedding_type="rope", share_embeddings_and_output_weights=True)


@pytest.fixture(scope="module")
def models(mf):
    """{name: (network before LoRA as {path: (class, in, out)}, network after get_pet_model)}."""
    built = {}
    for name, build in (("qwen3", tiny_qwen3), ("gpt", tiny_gpt)):
        net = build(mf)
        before = {path: cell for path, cell in net.cells_and_names()}
        weights = {path: (cell.weight, getattr(cell, "bias", None)) for path, cell in before.items()
                   if mcore.is_parallel_linear(cell)}
        get_pet_model(net, PET)
        built[name] = types.SimpleNamespace(net=net, before=before, weights=weights)
    return built


def expected_paths(name):
    prefix = "model.decoder.layers" if name == "qwen3" else "decoder.layers"
    return [f"{prefix}.{i}.{block}.{leaf}" for i in range(NUM_LAYERS)
            for block, leaf in (("self_attention", "linear_proj"), ("self_attention", "linear_qkv"),
                                ("mlp", "linear_fc1"), ("mlp", "linear_fc2"))]


def x_of(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


# ---- models ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["qwen3", "gpt"])
def test_get_pet_model_replaces_exactly_the_mcore_targets(models, name):
    built = models[name]
    cells = dict(built.net.cells_and_names())
    replaced = [path for path, cell in cells.items() if isinstance(cell, LoRADense)]
    assert sorted(replaced) == sorted(expected_paths(name))
    assert sorted(built.net.pet_summary["replaced"]) == sorted(expected_paths(name))
    expected_count = 0
    for path in replaced:
        new, old = cells[path], built.before[path]
        kind = KINDS[path.rsplit(".", 1)[-1]]
        assert type(new) is (LoRAColumnParallelLinear if kind == "column" else LoRARowParallelLinear)
        assert new.parallel_kind == kind and new.tensor_parallel_size == 1
        weight, bias = built.weights[path]
        assert new.weight is weight and (bias is None or new.bias is bias)  # the layer's own Parameters
        assert new.skip_bias_add == old.skip_bias_add and new.returns_bias == (old.has_bias and old.skip_bias_add)
        stem = weight.name[: -len(".weight")]
        assert new.mindpet_delta_lora_a.name == f"{stem}.mindpet_delta_lora_a"
        assert new.mindpet_delta_lora_a.shape == (4, old.input_size)
        assert new.mindpet_delta_lora_b.shape == (old.output_size, 4)
        expected_count += 4 * (old.input_size + old.output_size)
    trainable = [p for p in built.net.get_parameters() if p.requires_grad]
    assert all("mindpet_delta_lora_" in p.name for p in trainable)
    assert sum(p.size for p in trainable) == expected_count == built.net.pet_summary["trainable"]
    # the untargeted output layer (tied to the embedding in the GPT) stays the MindFormers layer
    assert not isinstance(cells[[p for p in cells if p.endswith("output_layer")][0]], LoRADense)


def _snapshot(net):
    return ([(path, id(cell)) for path, cell in net.cells_and_names()],
            [(p.name, id(p), p.requires_grad) for p in net.get_parameters()])


@pytest.mark.parametrize("pet, error, match", [
    ({"lora_rnk": 4}, ValueError, "lora_rank"),
    ({"target_modules": ".*nothing"}, ValueError, "linear_qkv"),  # the message lists the mcore layers
    ({"lora_rank": 0}, ValueError, "lora_rank"),
    ({"lora_alpha": float("nan")}, ValueError, "lora_alpha"),
    ({"target_modules": ".*linear_qkv|.*q_layernorm"}, TypeError, "q_layernorm"),
])
def test_refusals_leave_the_network_unchanged(mf, pet, error, match):
    net = tiny_qwen3(mf)
    before = _snapshot(net)
    with pytest.raises(error, match=match):
        get_pet_model(net, {**PET, **pet})
    assert _snapshot(net) == before


def test_tp2_on_cpu_is_refused_with_the_measured_reason(mf):
    net = tiny_qwen3(mf)
    layer = net.model.decoder.layers[1].mlp.linear_fc2
    layer.config = copy.copy(layer.config)
    layer.config.tensor_model_parallel_size = 2
    before = _snapshot(net)
    with pytest.raises(ValueError, match="tensor_model_parallel_size=2") as err:
        get_pet_model(net, PET)
    assert CPU_PARALLEL_ERROR in str(err.value) and "linear_fc2" in str(err.value)
    assert _snapshot(net) == before


def test_qwen3_forward_on_cpu_stops_at_the_rmsnorm_kernel(mf, models):
    """The mcore models' forward does not run on CPU in MindSpore 2.9: the first operator without a
    CPU kernel is RmsNorm (mindformers FusedRMSNorm, the input layernorm). So the layers are proven
    alone below."""
    ids = Tensor(np.random.default_rng(0).integers(0, 64, (1, 17)).astype(np.int32))
    with pytest.raises(RuntimeError, match=r"Unsupported op \[RmsNorm\] on CPU"):
        models["qwen3"].net(ids[:, :16], labels=ids[:, 1:])


def test_adapter_of_an_mcore_model_saves_and_loads(mf, models, tmp_path):
    net = models["gpt"].net
    rng = np.random.default_rng(3)
    lora = {p.name: p for p in net.get_parameters() if "mindpet_delta_lora_" in p.name}
    values = {name: rng.standard_normal(p.shape).astype(np.float32) for name, p in lora.items()}
    for name, p in lora.items():
        p.set_data(Tensor(values[name]))
    path = str(tmp_path / "gpt_lora.safetensors")
    save_adapter(net, path)
    for p in lora.values():
        p.set_data(Tensor(np.zeros(p.shape, np.float32)))
    load_adapter(net, path)
    for name, p in lora.items():
        np.testing.assert_array_equal(p.asnumpy(), values[name])


def test_qwen3_adapter_merges_into_its_base_and_exports_to_peft_in_one_line(models, tmp_path):
    """End to end on the real model: get_pet_model -> save_adapter -> merge_checkpoint into the
    network's own base checkpoint (W + s.B.A by numpy) -> export_peft with the fused layout taken from
    the adapter's metadata (q/k/v rows of B by the numpy de-interleaver)."""
    net = models["qwen3"].net
    rng = np.random.default_rng(11)
    lora = {p.name: p for p in net.get_parameters() if "mindpet_delta_lora_" in p.name}
    for p in lora.values():
        p.set_data(Tensor((0.1 * rng.standard_normal(p.shape)).astype(np.float32)))
    base_path, adapter_path = str(tmp_path / "base.ckpt"), str(tmp_path / "lora.safetensors")
    ms.save_checkpoint([{"name": p.name, "data": p} for p in net.get_parameters() if p.name not in lora], base_path)
    save_adapter(net, adapter_path)
    merged_path = str(tmp_path / "merged.ckpt")
    merge_checkpoint(base_path, adapter_path, merged_path)
    merged = {k: v.asnumpy() for k, v in ms.load_checkpoint(merged_path).items()}
    s = PET["lora_alpha"] / PET["lora_rank"]
    cells = [c for _, c in net.cells_and_names() if isinstance(c, LoRADense)]
    assert len(cells) == 4 * NUM_LAYERS
    for cell in cells:
        prefix = cell.weight.name[: -len(".weight")]
        a, b = lora[prefix + ".mindpet_delta_lora_a"].asnumpy(), lora[prefix + ".mindpet_delta_lora_b"].asnumpy()
        np.testing.assert_allclose(merged[cell.weight.name], cell.weight.asnumpy() + s * b @ a, atol=1e-6, rtol=0)
    config = export_peft(adapter_path, str(tmp_path / "peft"))
    assert sorted(config["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                                "up_proj", "v_proj"]
    with safe_open(str(tmp_path / "peft" / "adapter_model.safetensors"), "np") as f:
        peft = {k: f.get_tensor(k) for k in f.keys()}
    b_qkv = lora["decoder.layers.1.self_attention.linear_qkv.mindpet_delta_lora_b"].asnumpy()
    parts = mcore_split_qkv(b_qkv, num_heads=4, num_groups=2, head_dim=8)
    for proj, want in zip(("q_proj", "k_proj", "v_proj"), parts):
        key = f"base_model.model.model.layers.1.self_attn.{proj}.lora_B.weight"
        np.testing.assert_array_equal(peft[key], want)


# ---- the layers alone ----------------------------------------------------------------------------
IN, MID, OUT, R, ALPHA = 8, 12, 6, 3, 6.0


def layer_config(mf, **kw):
    return mf.TransformerConfig(num_layers=1, hidden_size=IN, num_attention_heads=2, compute_dtype="float32",
                                params_dtype="float32", **kw)


def column(mf, transpose_b=True, bias=True, skip_bias_add=False, **kw):
    return mf.layers.ColumnParallelLinear(IN, MID, layer_config(mf), init_method=mf.init(0.5), bias=bias,
                                          skip_bias_add=skip_bias_add, transpose_b=transpose_b, **kw)


def row(mf, bias=True, skip_bias_add=True):
    return mf.layers.RowParallelLinear(MID, OUT, layer_config(mf), init_method=mf.init(0.5), bias=bias,
                                       skip_bias_add=skip_bias_add)


def randomize(cell, seed, bias_scale=0.3):
    rng = np.random.default_rng(seed)
    for p in (cell.mindpet_delta_lora_a, cell.mindpet_delta_lora_b):
        p.set_data(Tensor((0.4 * rng.standard_normal(p.shape)).astype(np.float32)))
    if cell.bias is not None:
        cell.bias.set_data(Tensor((bias_scale * rng.standard_normal(cell.bias.shape)).astype(np.float32)))
    return cell


def numpy_of(cell):
    w = cell.weight.asnumpy()
    return (w if cell.transpose_b else w.T, None if cell.bias is None else cell.bias.asnumpy(),
            cell.mindpet_delta_lora_a.asnumpy(), cell.mindpet_delta_lora_b.asnumpy())


class Pair(nn.Cell):
    """Column -> Row as in an mcore MLP; the row layer's returned bias is added by the caller."""

    def __init__(self, col, rw):
        super().__init__()
        self.col, self.row = col, rw

    def construct(self, x):
        h, _ = self.col(x)
        y, bias = self.row(h)
        return y + bias


@pytest.fixture(scope="module")
def pair(mf):
    col = randomize(LoRAColumnParallelLinear.from_layer(column(mf), R, ALPHA), 1)
    rw = randomize(LoRARowParallelLinear.from_layer(row(mf), R, ALPHA), 2)
    return Pair(col, rw)


def test_pair_forward_and_gradients_match_numpy(pair, mode):  # pylint: disable=unused-argument
    x = x_of((5, 2, IN), seed=4)
    g = x_of((5, 2, OUT), seed=5)
    s = ALPHA / R
    w1, b1, a1, bb1 = numpy_of(pair.col)
    w2, b2, a2, bb2 = numpy_of(pair.row)
    h = lora_forward(x, w1, b1, a1, bb1, s)
    ref = lora_forward(h, w2, b2, a2, bb2, s)
    np.testing.assert_allclose(pair(Tensor(x)).asnumpy(), ref, atol=1e-5, rtol=0)

    params = ms.ParameterTuple([pair.col.mindpet_delta_lora_a, pair.col.mindpet_delta_lora_b,
                                pair.row.mindpet_delta_lora_a, pair.row.mindpet_delta_lora_b])
    grad = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)
    (dx,), (da1, db1, da2, db2) = grad(pair, params)(Tensor(x), Tensor(g))
    dh, ra2, rb2 = lora_grads(h, w2, b2, a2, bb2, s, g)
    rdx, ra1, rb1 = lora_grads(x, w1, b1, a1, bb1, s, dh)
    for got, want in ((dx, rdx), (da1, ra1), (db1, rb1), (da2, ra2), (db2, rb2)):
        np.testing.assert_allclose(got.asnumpy(), want, atol=1e-5, rtol=0)


def test_pair_merged_equals_unmerged(pair):
    x = Tensor(x_of((4, 2, IN), seed=6))
    w1 = pair.col.weight.asnumpy().copy()
    unmerged = pair(x).asnumpy()
    pair.col.merge()
    pair.row.merge()
    try:
        _, _, a1, bb1 = numpy_of(pair.col)
        np.testing.assert_allclose(pair.col.weight.asnumpy(), merged_weight(w1, a1, bb1, ALPHA / R), atol=1e-5)
        np.testing.assert_allclose(pair(x).asnumpy(), unmerged, atol=1e-5, rtol=0)
    finally:
        pair.col.unmerge()
        pair.row.unmerge()
    np.testing.assert_allclose(pair.col.weight.asnumpy(), w1, atol=1e-5)


def test_weight_stored_in_out_and_rslora_named_adapter(mf):
    """transpose_b=False (W [in, out]): forward, merge in that layout; rsLoRA; a second named adapter."""
    base = column(mf, transpose_b=False)
    cell = randomize(LoRAColumnParallelLinear.from_layer(base, R, ALPHA, use_rslora=True), 7)
    assert tuple(cell.weight.shape) == (IN, MID) and cell.weight is base.weight
    x = x_of((6, IN), seed=8)
    w, b, a, bb = numpy_of(cell)
    s = ALPHA / np.sqrt(R)
    out, bias = cell(Tensor(x))
    assert bias is None
    np.testing.assert_allclose(out.asnumpy(), lora_forward(x, w, b, a, bb, s), atol=1e-5, rtol=0)
    cell.merge()
    np.testing.assert_allclose(cell.weight.asnumpy(), merged_weight(w.T, a, bb, s, layout="in_out"), atol=1e-5)
    np.testing.assert_allclose(cell(Tensor(x))[0].asnumpy(), lora_forward(x, w, b, a, bb, s), atol=1e-5)
    cell.unmerge()
    a2, b2 = x_of((2, IN), 9, 0.4), x_of((MID, 2), 10, 0.4)
    cell.add_adapter("second", 2, 3.0, lora_a_init=Tensor(a2), lora_b_init=Tensor(b2))
    cell.set_active_adapter("second")
    np.testing.assert_allclose(cell(Tensor(x))[0].asnumpy(), lora_forward(x, w, b, a2, b2, 1.5), atol=1e-5)
    cell.set_active_adapter(None)
    np.testing.assert_allclose(cell(Tensor(x))[0].asnumpy(), x @ w.T + b, atol=1e-5)


def test_dora_on_a_column_layer_and_its_refusals(mf):
    cell = randomize(LoRAColumnParallelLinear.from_layer(column(mf), R, ALPHA, use_dora=True), 11)
    cell.init_dora_magnitude()
    m = cell.mindpet_delta_lora_magnitude.asnumpy() * 1.1
    cell.mindpet_delta_lora_magnitude.set_data(Tensor(m))
    x = x_of((4, IN), seed=12)
    w, b, a, bb = numpy_of(cell)
    np.testing.assert_allclose(cell(Tensor(x))[0].asnumpy(), dora_forward(x, w, b, a, bb, m, ALPHA / R), atol=1e-5)
    with pytest.raises(ValueError, match="transpose_b=False"):
        LoRAColumnParallelLinear.from_layer(column(mf, transpose_b=False), R, ALPHA, use_dora=True)


def test_tied_weight_is_taken_from_the_call_and_not_merged(mf):
    base = column(mf, bias=False, skip_weight_param_allocation=True)
    cell = randomize(LoRAColumnParallelLinear.from_layer(base, R, ALPHA), 13)
    assert cell.weight is None and "weight" not in [p.name for p in cell.get_parameters()]
    x, w = x_of((3, IN), seed=14), x_of((MID, IN), seed=15)
    a, bb = cell.mindpet_delta_lora_a.asnumpy(), cell.mindpet_delta_lora_b.asnumpy()
    np.testing.assert_allclose(cell(Tensor(x), Tensor(w))[0].asnumpy(), lora_forward(x, w, None, a, bb, ALPHA / R),
                               atol=1e-5)
    with pytest.raises(ValueError, match="skip_weight_param_allocation"):
        cell.merge()
    assert not cell.merged


# ---- MindFormers' own LoRA layers as the reference --------------------------------------------------
def _their_pair(mf):
    cfg = layer_config(mf)
    col = mf.lora_layers.ColumnParallelLinearWithLoRA(IN, MID, cfg, init_method=mf.init(0.5), bias=True,
                                                      lora_rank=R, lora_alpha=ALPHA)
    rw = mf.lora_layers.RowParallelLinearWithLoRA(MID, OUT, cfg, init_method=mf.init(0.5), bias=True,
                                                  skip_bias_add=True, lora_rank=R, lora_alpha=ALPHA)
    net = Pair(col, rw)
    rng = np.random.default_rng(20)
    for p in net.get_parameters():
        p.set_data(Tensor((0.4 * rng.standard_normal(p.shape)).astype(np.float32)))
    return net


def test_mindformers_lora_layers_name_their_factors_lora_A_lora_B(mf):
    names = sorted(p.name for p in _their_pair(mf).get_parameters())
    assert names == ["col.bias", "col.lora_A.weight", "col.lora_B.weight", "col.weight",
                     "row.bias", "row.lora_A.weight", "row.lora_B.weight", "row.weight"]
    shapes = {p.name: p.shape for p in _their_pair(mf).get_parameters()}
    assert shapes["col.lora_A.weight"] == (R, IN) and shapes["col.lora_B.weight"] == (MID, R)


def test_same_outputs_as_mindformers_lora_layers_and_checkpoints_both_ways(mf, tmp_path):
    theirs = _their_pair(mf)
    ours = Pair(LoRAColumnParallelLinear.from_layer(column(mf), R, ALPHA),
                LoRARowParallelLinear.from_layer(row(mf), R, ALPHA))
    # a checkpoint written by MindFormers' layers (base + lora_A / lora_B) ...
    ckpt = str(tmp_path / "theirs.ckpt")
    ms.save_checkpoint(theirs, ckpt)
    base = {k: v for k, v in ms.load_checkpoint(ckpt).items() if "lora_" not in k}
    ms.load_param_into_net(ours, base, strict_load=True)
    load_adapter(ours, ckpt)  # ... loads into ours
    x = Tensor(x_of((4, 2, IN), seed=21))
    np.testing.assert_allclose(ours(x).asnumpy(), theirs(x).asnumpy(), atol=1e-5, rtol=0)
    # ... and ours back into theirs, under their names
    mine = {p.name.replace("mindpet_delta_lora_a", "lora_A.weight").replace("mindpet_delta_lora_b", "lora_B.weight"):
            ms.Parameter(Tensor(p.asnumpy() * 0.5)) for p in ours.get_parameters() if "mindpet_delta_lora_" in p.name}
    for p in ours.get_parameters():
        if "mindpet_delta_lora_" in p.name:
            p.set_data(Tensor(p.asnumpy() * 0.5))
    not_loaded, unused = ms.load_param_into_net(theirs, mine, strict_load=True)
    assert unused == [] and sorted(not_loaded) == ["col.bias", "col.weight", "row.bias", "row.weight"]  # the base
    np.testing.assert_allclose(theirs(x).asnumpy(), ours(x).asnumpy(), atol=1e-5, rtol=0)


def test_use_mindpet_lite_makes_mindformers_get_pet_model_build_our_mcore_cells(mf):
    """MindFormers' own path (mindformers.pet.get_pet_model -> PetModel -> LoraAdapter, then its mcore
    freeze by freeze_include / freeze_exclude, which it requires): our cells, only A and B trainable."""
    net = tiny_qwen3(mf)
    original = (mf.lora_adapter.ColumnParallelLinearWithLoRA, mf.lora_adapter.RowParallelLinearWithLoRA,
                mf.lora_adapter.LoRADense)
    with use_mindpet_lite():
        assert mf.lora_adapter.ColumnParallelLinearWithLoRA is mcore.column_lora_from_args
        pet = mf.get_pet_model(net, {**PET, "freeze_include": ["*"], "freeze_exclude": ["*lora*"]})
    assert (mf.lora_adapter.ColumnParallelLinearWithLoRA, mf.lora_adapter.RowParallelLinearWithLoRA,
            mf.lora_adapter.LoRADense) == original
    cells = dict(pet.cells_and_names())
    # PetModel and LoraModel wrap the model: network.network.model.decoder...
    replaced = sorted(path[path.index("model.decoder"):] for path, cell in cells.items() if isinstance(cell, LoRADense))
    assert replaced == sorted(expected_paths("qwen3"))
    fc2 = [cell for path, cell in cells.items() if path.endswith("layers.0.mlp.linear_fc2")][0]
    assert isinstance(fc2, LoRARowParallelLinear) and fc2.lora_rank == 4 and fc2.scaling == 2.0
    trainable = sorted(p.name for p in pet.get_parameters() if p.requires_grad)
    assert len(trainable) == 2 * len(replaced) and all(n.endswith(("mindpet_delta_lora_a", "mindpet_delta_lora_b"))
                                                       for n in trainable)
    assert "decoder.layers.0.mlp.linear_fc2.mindpet_delta_lora_a" in trainable


# ---- tensor parallel, simulated ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["column", "row"])
@pytest.mark.parametrize("transpose_b", [True, False])
def test_tp2_shards_computed_apart_and_combined_equal_the_whole_layer(kind, transpose_b):
    rng = np.random.default_rng(30)
    x = rng.standard_normal((6, IN))
    w = rng.standard_normal((MID, IN))
    b = rng.standard_normal(MID)
    a, bmat = rng.standard_normal((R, IN)), rng.standard_normal((MID, R))
    plan = tensor_parallel_strategies(kind, tp=2, transpose_b=transpose_b, has_bias=True)
    stored = w if transpose_b else w.T
    whole = lora_forward(x, w, b, a, bmat, ALPHA / R)
    split = tp_lora_forward(x, stored, b, a, bmat, ALPHA / R, plan, 2, transpose_b=transpose_b)
    np.testing.assert_allclose(split, whole, atol=1e-10)
    a_split, b_split = plan["strategy_lora_a_matmul"][1], plan["strategy_lora_b_matmul"][1]
    if kind == "column":  # Megatron: A replicated, B split by output rows, no reduce of x·Aᵀ
        assert a_split == (1, 1) and b_split == (2, 1) and plan["strategy_lora_a_matmul"][0] == (1, 1)
    else:  # A split by input columns, x·Aᵀ reduced once, B replicated
        assert a_split == (1, 2) and b_split == (1, 1) and plan["strategy_lora_a_matmul"][0] == (1, 2)


def test_the_layer_plan_follows_its_config(mf):
    cell = LoRARowParallelLinear.from_layer(row(mf), R, ALPHA)
    cell.config = copy.copy(cell.config)
    cell.config.data_parallel_size, cell.tensor_parallel_size = 2, 4
    plan = cell.tensor_parallel_plan()
    assert plan["strategy_org_dense_matmul"] == ((2, 4), (1, 4))
    assert plan["strategy_lora_a_matmul"] == ((2, 4), (1, 4)) and plan["strategy_lora_b_matmul"] == ((2, 1), (1, 1))
    assert "strategy_org_bias_add" not in plan  # skip_bias_add: the bias is returned, not added here


@pytest.mark.parametrize("bad", [{"kind": "diagonal"}, {"tp": 0}])
def test_strategies_refuse_bad_input(bad):
    args = {"kind": "column", "tp": 2, **bad}
    with pytest.raises(ValueError):
        tensor_parallel_strategies(**args)



def test_rank_and_alpha_patterns_on_an_mcore_model(mf):
    net = tiny_qwen3(mf)
    get_pet_model(net, {**PET, "rank_pattern": {".*linear_fc2": 2}, "alpha_pattern": {".*linear_qkv": 2}})
    cells = dict(net.cells_and_names())
    count = 0
    for path in expected_paths("qwen3"):
        cell = cells[path]
        rank = 2 if path.endswith("linear_fc2") else 4
        alpha = 2 if path.endswith("linear_qkv") else 8
        assert (cell.lora_rank, cell.scaling) == (rank, alpha / rank)
        count += rank * (cell.in_channels + cell.out_channels)
    assert net.pet_summary["trainable"] == count


def test_mixed_rows_on_a_row_layer(mf):
    """Each batch row its own adapter (the cell allows it; MindFormers' models do not pass `rows`)."""
    cell = randomize(LoRARowParallelLinear.from_layer(row(mf, skip_bias_add=False), R, ALPHA), 40)
    a2, b2 = x_of((2, MID), 41, 0.4), x_of((OUT, 2), 42, 0.4)
    cell.add_adapter("second", 2, 4.0, lora_a_init=Tensor(a2), lora_b_init=Tensor(b2))
    cell.set_mix_columns(["default", "second"])
    x = x_of((3, 4, MID), seed=43)
    rows = np.array([[1, 0], [0, 1], [0, 0]], np.float32)  # default, second, base
    out, bias = cell(Tensor(x), Tensor(rows))
    assert bias is None
    w, b, a, bb = numpy_of(cell)
    want = [lora_forward(x[0], w, b, a, bb, ALPHA / R), lora_forward(x[1], w, b, a2, b2, 2.0), x[2] @ w.T + b]
    np.testing.assert_allclose(out.asnumpy(), np.stack(want), atol=1e-5, rtol=0)


def test_a_named_adapter_on_plain_mcore_layers_builds_its_cells(mf, tmp_path):
    """load_adapter(..., adapter_name=) on mcore layers without LoRA cells builds mcore LoRA cells for it
    (as get_pet_model would), the adapter then active: the numpy LoRA forward; "__base__" the plain one."""
    lora = Pair(randomize(LoRAColumnParallelLinear.from_layer(column(mf), R, ALPHA), 60),
                randomize(LoRARowParallelLinear.from_layer(row(mf), R, ALPHA), 61))
    for param in lora.get_parameters():  # as get_pet_model freezes: the file holds the factors only
        param.requires_grad = "mindpet_delta_lora" in param.name
    path = str(tmp_path / "pair.safetensors")
    save_adapter(lora, path)
    plain = Pair(column(mf), row(mf))
    for mine, theirs in ((plain.col, lora.col), (plain.row, lora.row)):
        mine.weight.set_data(Tensor(theirs.weight.asnumpy()))
        mine.bias.set_data(Tensor(theirs.bias.asnumpy()))
    load_adapter(plain, path, adapter_name="pair")
    assert isinstance(plain.col, LoRAColumnParallelLinear) and isinstance(plain.row, LoRARowParallelLinear)
    assert plain.col.active_adapter == plain.row.active_adapter == "pair"
    x = x_of((5, 2, IN), seed=62)
    (w1, b1, a1, bb1), (w2, b2, a2, bb2) = numpy_of(lora.col), numpy_of(lora.row)
    want = lora_forward(lora_forward(x, w1, b1, a1, bb1, ALPHA / R), w2, b2, a2, bb2, ALPHA / R)
    np.testing.assert_allclose(plain(Tensor(x)).asnumpy(), want, atol=1e-5, rtol=0)
    set_adapter(plain, "default")  # the placeholder first adapter adds nothing: the plain layers
    np.testing.assert_allclose(plain(Tensor(x)).asnumpy(), (x @ w1.T + b1) @ w2.T + b2, atol=1e-5, rtol=0)


def test_strategies_are_set_when_the_parallel_mode_splits_operators(mf):
    """Under semi-auto parallel (set, not compiled: CPU cannot) from_layer shards the LoRA operators
    by the layer's config; stand-alone it leaves them alone."""
    base = column(mf)
    plain = LoRAColumnParallelLinear.from_layer(base, R, ALPHA)
    assert getattr(plain.lora_b_matmul, "in_strategy", None) is None
    ms.set_auto_parallel_context(parallel_mode="semi_auto_parallel")
    try:
        sharded = LoRAColumnParallelLinear.from_layer(base, R, ALPHA)
    finally:
        ms.reset_auto_parallel_context()
    plan = sharded.tensor_parallel_plan()
    assert sharded.lora_b_matmul.in_strategy == plan["strategy_lora_b_matmul"]
    assert sharded.lora_a_matmul.in_strategy == plan["strategy_lora_a_matmul"]
    assert sharded.matmul.in_strategy == plan["strategy_org_dense_matmul"]


def test_a_few_training_steps_on_the_pair_lower_the_loss(mf):
    """What the model's forward cannot show on CPU: LoRA trains through the mcore cells (base frozen)."""
    net = Pair(LoRAColumnParallelLinear.from_layer(column(mf), R, ALPHA),
               LoRARowParallelLinear.from_layer(row(mf), R, ALPHA))
    for p in net.get_parameters():
        p.requires_grad = "mindpet_delta_lora_" in p.name
    x, y = Tensor(x_of((16, IN), seed=50)), Tensor(x_of((16, OUT), seed=51))
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()),
                               nn.SGD([p for p in net.get_parameters() if p.requires_grad], learning_rate=0.05))
    base = {p.name: p.asnumpy().copy() for p in net.get_parameters() if not p.requires_grad}
    losses = [float(step(x, y).asnumpy()) for _ in range(8)]
    assert losses[-1] < losses[0] * 0.9
    for p in net.get_parameters():
        if not p.requires_grad:
            np.testing.assert_array_equal(p.asnumpy(), base[p.name])


def test_mindformers_own_lora_layers_are_not_wrapped_again(mf):
    net = _their_pair(mf)
    before = _snapshot(net)
    with pytest.raises(TypeError, match="ColumnParallelLinearWithLoRA"):
        get_pet_model(net, {**PET, "target_modules": "col|row"})
    assert _snapshot(net) == before


def test_linear_no_tp_and_the_split_axes_of_each_kind(mf):
    no_tp = mf.layers.LinearNoTP(IN, MID, layer_config(mf), init_method=mf.init(0.5), bias=False)
    cell = LoRAColumnParallelLinear.from_layer(no_tp, R, ALPHA)
    assert cell.parallel_kind == "replicated"
    cell.tensor_parallel_size = 2  # as a tp=2 config would give (not buildable on CPU)
    plan = cell.tensor_parallel_plan()
    assert plan["strategy_org_dense_matmul"] == ((1, 1), (1, 1)) and plan["strategy_lora_b_matmul"][1] == (1, 1)
    assert mcore.lora_split_axes(cell) == {"mindpet_delta_lora_a": None, "mindpet_delta_lora_b": None}
    col = LoRAColumnParallelLinear.from_layer(column(mf), R, ALPHA, use_dora=True)
    rw = LoRARowParallelLinear.from_layer(row(mf), R, ALPHA)
    col.tensor_parallel_size = rw.tensor_parallel_size = 2
    assert mcore.lora_split_axes(col) == {"mindpet_delta_lora_a": None, "mindpet_delta_lora_b": 0,
                                          "mindpet_delta_lora_magnitude": 0}
    assert mcore.lora_split_axes(rw) == {"mindpet_delta_lora_a": 1, "mindpet_delta_lora_b": None}
    layout = mcore.parallel_layout(Pair(col, rw))
    assert layout["col"]["kind"] == "column" and layout["row"]["split_axes"]["mindpet_delta_lora_a"] == 1


def test_pissa_start_and_dora_on_an_mcore_model(mf):
    """init_lora_weights: pissa keeps W = W_res + s·B0·A0 on every target; use_dora adds magnitudes."""
    net = tiny_gpt(mf)
    originals = {path: cell.weight.asnumpy().copy() for path, cell in net.cells_and_names()
                 if mcore.is_parallel_linear(cell) and path.split(".")[-1] in KINDS}
    get_pet_model(net, {**PET, "init_lora_weights": "pissa", "use_dora": True})
    cells = dict(net.cells_and_names())
    for path, w in originals.items():
        cell = cells[path]
        w_res, a, bb = cell.weight.asnumpy(), cell.mindpet_delta_lora_a.asnumpy(), cell.mindpet_delta_lora_b.asnumpy()
        np.testing.assert_allclose(merged_weight(w_res, a, bb, cell.scaling), w, atol=1e-5)
        assert cell.use_dora and cell.mindpet_delta_lora_magnitude.shape == (cell.out_channels,)
        np.testing.assert_allclose(cell.mindpet_delta_lora_magnitude.asnumpy(), np.linalg.norm(w, axis=1), rtol=1e-5)
