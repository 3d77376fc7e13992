"""MindFormers mcore checkpoints: the fused layouts (against MindFormers' own packing code), the mcore
LoRA names (MindFormers' own LoRA cells' checkpoints), merge into a fused base. The PEFT side is
test_peft_mcore.py."""

import numpy as np
import pytest
from mindspore import nn

from mindpet_lite import _files
from mindpet_lite.adapters import mcore, names
from mindpet_lite.adapters.io import load_adapter, read_adapter, save_adapter
from mindpet_lite.adapters.merge import merge_checkpoint, merge_full_checkpoint
from mindpet_lite.delta.lora import LoRADense
from mindpet_lite.graph.freeze import freeze_delta
from tests import reference as ref

NH, NG, D, HIDDEN, FFN, R, ALPHA, LAYERS = 4, 2, 8, 32, 48, 4, 8, 2
QKV = (NH + 2 * NG) * D
# (mcore module inside decoder.layers.N, out, in)
MODULES = (("self_attention.linear_qkv", QKV, HIDDEN), ("self_attention.linear_proj", HIDDEN, NH * D),
           ("mlp.linear_fc1", 2 * FFN, HIDDEN), ("mlp.linear_fc2", HIDDEN, FFN))
HF_CONFIG = {"model_type": "qwen3", "hidden_size": HIDDEN, "intermediate_size": FFN, "num_attention_heads": NH,
             "num_key_value_heads": NG, "head_dim": D, "num_hidden_layers": LAYERS, "vocab_size": 64}
PET_CONFIG = {"pet_type": "lora", "lora_rank": R, "lora_alpha": ALPHA,
              "target_modules": ".*linear_qkv|.*linear_proj|.*linear_fc1|.*linear_fc2"}
SCALING = ALPHA / R


def _mf_mixin():
    mixin = pytest.importorskip("mindformers.parallel_core.utils.model_mixin")
    return mixin.TrainModelMixin


def _adapter(rng, names_style="ours"):
    """A trained-looking LoRA of every mcore projection, numpy only, with our metadata."""
    tensors = {}
    for i in range(LAYERS):
        for module, out, inn in MODULES:
            path = f"model.decoder.layers.{i}.{module}"
            a = rng.standard_normal((R, inn)).astype(np.float32)
            b = rng.standard_normal((out, R)).astype(np.float32)
            if names_style == "ours":
                tensors[f"{path}.mindpet_delta_lora_a"], tensors[f"{path}.mindpet_delta_lora_b"] = a, b
            else:  # MindFormers' ColumnParallelLinearWithLoRA / RowParallelLinearWithLoRA sub-cells
                tensors[f"{path}.lora_A.weight"], tensors[f"{path}.lora_B.weight"] = a, b
    meta = {"source": "mindpet_lite", "pet_config": PET_CONFIG, "scaling": SCALING}
    return tensors, meta


def _base(rng):
    """An mcore Qwen3 base checkpoint's keys and shapes (as TrainingQwen3ForCausalLM names them)."""
    base = {"model.embedding.word_embeddings.weight": rng.standard_normal((64, HIDDEN)),
            "model.decoder.final_layernorm.weight": 1 + 0.1 * rng.standard_normal(HIDDEN),
            "model.output_layer.weight": rng.standard_normal((64, HIDDEN))}
    for i in range(LAYERS):
        for module, out, inn in MODULES:
            base[f"model.decoder.layers.{i}.{module}.weight"] = rng.standard_normal((out, inn))
        for norm, size in (("input_layernorm", HIDDEN), ("pre_mlp_layernorm", HIDDEN),
                           ("self_attention.q_layernorm", D), ("self_attention.k_layernorm", D)):
            base[f"model.decoder.layers.{i}.{norm}.weight"] = 1 + 0.1 * rng.standard_normal(size)
    return {k: (0.1 * v).astype(np.float32) for k, v in base.items()}


# ------------------------------------------------------------------------------------------------
# layouts and names
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("contiguous", [False, True])
def test_qkv_rows_invert_mindformers_packing(rng, contiguous):
    mixin = _mf_mixin()
    q, k, v = (rng.standard_normal((n * D, HIDDEN)) for n in (NH, NG, NG))
    if contiguous:
        fused = mixin.concat_qkv_contiguous(None, q, k, v, "x.linear_q.weight")["x.linear_qkv.weight"]
    else:
        fused = mixin.concat_qkv_interleaved(None, q, k, v, "x.linear_q.weight", D, NG, NH)["x.linear_qkv.weight"]
    layout = mcore.FusedLayout(NH, NG, D, qkv="contiguous" if contiguous else "interleaved")
    parts = layout.qkv_rows(fused.shape[0])
    for got, want, again in zip(mcore.split_rows(fused, parts), (q, k, v),
                                ref.mcore_split_qkv(fused, NH, NG, D, contiguous)):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(again, want)  # the numpy reference agrees with MindFormers too
    np.testing.assert_array_equal(mcore.fuse_rows([q, k, v], parts, "qkv"), fused)


@pytest.mark.parametrize("interleaved", [True, False])
def test_fc1_rows_invert_mindformers_packing(rng, interleaved):
    mixin = _mf_mixin()
    gate, up = rng.standard_normal((FFN, HIDDEN)), rng.standard_normal((FFN, HIDDEN))
    if interleaved:
        fused = mixin.concat_linear_fc1_interleaved(None, gate, up, "x.gating.weight", FFN)["x.linear_fc1.weight"]
    else:
        fused = mixin.concat_linear_fc1_contiguous(None, gate, up, "x.gating.weight")["x.linear_fc1.weight"]
    layout = mcore.FusedLayout(ffn_hidden_size=FFN, fc1="interleaved" if interleaved else "contiguous")
    for got, want, again in zip(mcore.split_rows(fused, layout.fc1_rows(fused.shape[0])), (gate, up),
                                ref.mcore_split_fc1(fused, interleaved)):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(again, want)


def test_layout_from_configs_and_bad_values():
    hf = mcore.layout_from_config(HF_CONFIG).to_dict()
    mf = mcore.layout_from_config({"model": {"model_config": {"num_attention_heads": NH, "num_query_groups": NG,
                                                              "kv_channels": D, "ffn_hidden_size": FFN,
                                                              "use_contiguous_weight_layout_attention": True}}})
    assert hf == {"num_attention_heads": NH, "num_query_groups": NG, "kv_channels": D, "ffn_hidden_size": FFN,
                  "qkv": "interleaved", "fc1": "interleaved"}
    assert mf.to_dict() == {**hf, "qkv": "contiguous"}
    with pytest.raises(ValueError, match="multiple of num_query_groups"):
        mcore.FusedLayout(4, 3, 8)
    with pytest.raises(ValueError, match=r"linear_qkv has 60 rows .* = 64"):
        mcore.FusedLayout(NH, NG, D).qkv_rows(60)
    with pytest.raises(ValueError, match="--model-config"):
        mcore.FusedLayout().qkv_rows(QKV)
    with pytest.raises(ValueError, match="qkv"):
        mcore.FusedLayout(qkv="per_head")


def test_mcore_names_to_hf():
    assert names.mcore_module_to_hf("model.decoder.layers.3.self_attention.linear_qkv") == (
        "model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.k_proj", "model.layers.3.self_attn.v_proj")
    assert names.mcore_module_to_hf("model.decoder.layers.0.mlp.linear_fc1") == (
        "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj")
    assert names.mcore_module_to_hf("model.decoder.layers.0.pre_mlp_layernorm") == (
        "model.layers.0.post_attention_layernorm",)
    assert names.mcore_module_to_hf("model.embedding.word_embeddings") == ("model.embed_tokens",)
    assert names.mcore_module_to_hf("model.layers.0.attention.wq") is None
    assert names.hf_module_to_mcore("model.layers.1.mlp.up_proj") == ("model.decoder.layers.1.mlp.linear_fc1", 1)
    assert [names.parallel_kind(f"x.{m}") for m in ("linear_qkv", "linear_fc1", "linear_proj", "linear_fc2")] == [
        "column", "column", "row", "row"]


# ------------------------------------------------------------------------------------------------
# a network with LoRADense cells at mcore paths: MindFormers' lora_A / lora_B names load onto it
# ------------------------------------------------------------------------------------------------
def _ours(leaf, out, inn):
    return LoRADense(inn, out, R, ALPHA, lora_b_init="normal")


class _Group(nn.Cell):
    def __init__(self, specs, cell):
        super().__init__()
        for leaf, out, inn in specs:
            setattr(self, leaf, cell(leaf, out, inn))


class _Layer(nn.Cell):
    def __init__(self, cell):
        super().__init__()
        self.self_attention = _Group([(m.split(".")[1], o, i) for m, o, i in MODULES[:2]], cell)
        self.mlp = _Group([(m.split(".")[1], o, i) for m, o, i in MODULES[2:]], cell)


class _Decoder(nn.Cell):
    def __init__(self, cell):
        super().__init__()
        self.layers = nn.CellList([_Layer(cell) for _ in range(LAYERS)])


class _Gpt(nn.Cell):
    def __init__(self, cell):
        super().__init__()
        self.decoder = _Decoder(cell)


class McoreLike(nn.Cell):
    """Stands in for TrainingQwen3ForCausalLM: LoRA cells at the mcore paths (ours, or MindFormers'), its config."""
    def __init__(self, cell=_ours):
        super().__init__()
        self.model = _Gpt(cell)
        self.config = HF_CONFIG


@pytest.fixture(scope="module")
def mcore_net():
    net = McoreLike()
    freeze_delta(net, "lora")
    return net


def test_mindformers_lora_names_load_and_save_records_layout(tmp_path, rng, mcore_net):
    tensors, _ = _adapter(rng, names_style="mindformers")
    tensors["model.decoder.layers.0.self_attention.linear_qkv.weight"] = rng.standard_normal((QKV, HIDDEN))
    tensors["adam_m.model.decoder.layers.0.mlp.linear_fc1.lora_A.weight"] = np.zeros((R, HIDDEN))
    path = str(tmp_path / "mf_lora.ckpt")
    _files.write_checkpoint({k: v.astype(np.float32) for k, v in tensors.items()}, path, "ckpt")
    load_adapter(mcore_net, path)  # base weight and optimizer state ignored, lora_A / lora_B read as ours
    params = {n: _files.to_numpy(p) for n, p in mcore_net.parameters_and_names()}
    for key, value in tensors.items():
        ours = names.normalize_name(key)
        if "lora_" in key and not key.startswith("adam_m."):
            np.testing.assert_array_equal(params[ours], value)
    meta = save_adapter(mcore_net, str(tmp_path / "ours.safetensors"))
    assert meta["mcore_layout"] == {"num_attention_heads": NH, "num_query_groups": NG, "kv_channels": D,
                                    "ffn_hidden_size": FFN, "qkv": "interleaved", "fc1": "interleaved"}
    saved, meta_back = read_adapter(str(tmp_path / "ours.safetensors"))
    assert sorted(saved) == sorted(names.normalize_name(k) for k in tensors if "lora_" in k and "adam" not in k)
    assert meta_back["mcore_layout"] == meta["mcore_layout"]


def _mindformers_lora_net():
    """The same tree with MindFormers' own ColumnParallelLinearWithLoRA / RowParallelLinearWithLoRA."""
    layers = pytest.importorskip("mindformers.parallel_core.training_graph.tensor_parallel.lora_layers")
    from mindformers.parallel_core.transformer_config import TransformerConfig  # pylint: disable=import-outside-toplevel
    cfg = TransformerConfig(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=NH, ffn_hidden_size=FFN)

    def cell(leaf, out, inn):
        kind = layers.ColumnParallelLinearWithLoRA if names.parallel_kind(leaf) == "column" else \
            layers.RowParallelLinearWithLoRA
        return kind(inn, out, config=cfg, bias=False, lora_rank=R, lora_alpha=ALPHA, init_method=cfg.init_method,
                    lora_b_init="normal")

    net = McoreLike(cell)
    return net


def test_checkpoint_of_mindformers_lora_cells_loads_and_goes_back(tmp_path, mcore_net):
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    mf_net = _mindformers_lora_net()
    path = str(tmp_path / "mindformers_lora.ckpt")
    ms.save_checkpoint(mf_net, path)
    mf_params = {n: _files.to_numpy(p) for n, p in mf_net.parameters_and_names()}
    assert "model.decoder.layers.1.mlp.linear_fc1.lora_B.weight" in mf_params
    load_adapter(mcore_net, path)  # base weights in the file ignored, lora_A / lora_B read as ours
    ours = {n: _files.to_numpy(p) for n, p in mcore_net.parameters_and_names()}
    lora = [n for n in mf_params if ".lora_" in n]
    assert len(lora) == 4 * LAYERS * 2
    for name in lora:
        np.testing.assert_array_equal(ours[names.normalize_name(name)], mf_params[name])
    # MindFormers' full checkpoint (base + lora_A / lora_B) merged into a plain mcore base
    merged = merge_full_checkpoint(path, scaling=SCALING)
    assert sorted(merged) == sorted(n for n in mf_params if ".lora_" not in n)
    module = "model.decoder.layers.0.self_attention.linear_qkv"
    np.testing.assert_allclose(merged[f"{module}.weight"], ref.merged_weight(
        mf_params[f"{module}.weight"], mf_params[f"{module}.lora_A.weight"], mf_params[f"{module}.lora_B.weight"],
        SCALING), rtol=1e-5, atol=1e-6)
    # and back: our adapter file onto MindFormers' cells (their names from ours)
    save_adapter(mcore_net, str(tmp_path / "ours.ckpt"))
    saved, _ = read_adapter(str(tmp_path / "ours.ckpt"))
    back = {n.replace("mindpet_delta_lora_a", "lora_A.weight").replace("mindpet_delta_lora_b", "lora_B.weight"): v
            for n, v in saved.items()}
    fresh = _mindformers_lora_net()
    assert set(back) <= {n for n, _ in fresh.parameters_and_names()}
    ms.load_param_into_net(fresh, {n: ms.Parameter(ms.Tensor(v), name=n) for n, v in back.items()}, strict_load=True)
    for name, value in back.items():
        np.testing.assert_array_equal(_files.to_numpy(dict(fresh.parameters_and_names())[name]), value)


# ------------------------------------------------------------------------------------------------
# merge into a fused mcore base
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("names_style", ["ours", "mindformers"])
def test_merge_into_mcore_base(tmp_path, rng, names_style):
    base, (tensors, meta) = _base(rng), _adapter(rng, names_style)
    if names_style == "mindformers":  # MindFormers files carry no alpha: the scaling is given
        merged = merge_checkpoint(base, tensors, scaling=SCALING)
    else:
        merged = merge_checkpoint(base, (tensors, meta))
    assert sorted(merged) == sorted(base)
    pairs = {}
    for key, value in tensors.items():
        module, leaf = names.normalize_name(key).rsplit(".", 1)
        pairs.setdefault(module, {})[leaf] = value
    for module, pair in pairs.items():
        want = ref.merged_weight(base[f"{module}.weight"], pair["mindpet_delta_lora_a"], pair["mindpet_delta_lora_b"],
                                 SCALING)
        np.testing.assert_allclose(merged[f"{module}.weight"], want, rtol=1e-5, atol=1e-6)
    for key in base:
        if not any(key == f"{m}.weight" for m in pairs):
            np.testing.assert_array_equal(merged[key], base[key])
    # per HF module, the merged fused rows are that module's own merge (the split commutes with the merge)
    module = "model.decoder.layers.1.self_attention.linear_qkv"
    a, b = pairs[module]["mindpet_delta_lora_a"], pairs[module]["mindpet_delta_lora_b"]
    for w_hf, b_hf, merged_hf in zip(ref.mcore_split_qkv(base[f"{module}.weight"], NH, NG, D),
                                     ref.mcore_split_qkv(b, NH, NG, D),
                                     ref.mcore_split_qkv(merged[f"{module}.weight"], NH, NG, D)):
        np.testing.assert_allclose(merged_hf, ref.merged_weight(w_hf, a, b_hf, SCALING), rtol=1e-5, atol=1e-6)
