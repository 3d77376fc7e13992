"""get_pet_model: matching rules, replacement, names, freezing, failure atomicity, and the issue's
bar on the built-in Llama (llama2-7b pet_config at scaled-down size)."""
import numpy as np
import pytest
import yaml

import mindspore as ms
from mindspore import Tensor, nn
from mindspore import dtype as mstype

from mindpet_lite.delta.lora import LoRADense
from mindpet_lite.models.llama import LlamaForCausalLM
from mindpet_lite.pet import LoraConfig, apply_lora, get_pet_model
from tests.reference import lora_forward

TINY = dict(hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, vocab_size=64, seq_length=8,
            intermediate_size=48)
QKVO = ".*wq|.*wk|.*wv|.*wo"


def llama(**kw):
    ms.set_seed(0)
    return LlamaForCausalLM(dict(TINY, **kw))


def pet(target=QKVO, **kw):
    kw = dict(dict(lora_rank=4, lora_alpha=8), **kw)
    kw.setdefault("lora_dropout", 0.0)
    return dict(target_modules=target, **kw)


def lora_paths(net):
    return [path for path, cell in net.cells_and_names() if isinstance(cell, LoRADense)]


def snapshot(net):
    """Everything a failed application must leave as it was."""
    cells = [(path, id(cell), type(cell)) for path, cell in net.cells_and_names()]
    params = [(path, id(p), p.name, p.requires_grad) for path, p in net.parameters_and_names()]
    return cells, params


# ---- matching -----------------------------------------------------------------------------------
def test_attribute_name_rule_replaces_all_attention_projections():
    net = llama()
    assert get_pet_model(net, pet()) is net
    expected = [f"model.layers.{i}.attention.{w}" for i in range(2) for w in ("wq", "wk", "wv", "wo")]
    assert lora_paths(net) == expected
    assert net.pet_summary["replaced"] == expected
    assert net.pet_summary["num_replaced"] == 8


def test_full_path_rule_is_layer_selective():
    net = llama(num_layers=3)
    get_pet_model(net, pet(r"model\.layers\.[01]\.attention\.w[qv]"))
    assert lora_paths(net) == ["model.layers.0.attention.wq", "model.layers.0.attention.wv",
                               "model.layers.1.attention.wq", "model.layers.1.attention.wv"]


def test_exclude_layers_skips_subtree_by_either_rule():
    net = llama(num_layers=3)
    get_pet_model(net, pet(".*wq|.*w1", exclude_layers=[r"model\.layers\.1", "feed_forward"]))
    assert lora_paths(net) == ["model.layers.0.attention.wq", "model.layers.2.attention.wq"]


def test_exclude_layers_string_is_one_pattern():
    net = llama()
    # iterated per character, 'w' would exclude wq as well
    get_pet_model(net, pet(".*wq|.*wk", exclude_layers="wk"))
    assert lora_paths(net) == ["model.layers.0.attention.wq", "model.layers.1.attention.wq"]


def test_config_sources_dict_yaml_and_object(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"model_config": {"pet_config": pet("wq")}}}))
    cfg = LoraConfig(**pet("wq"))
    for source in (pet("wq"), str(path), cfg):
        net = get_pet_model(llama(), source)
        assert isinstance(net.pet_config, LoraConfig)
        assert net.pet_config == cfg
        assert len(lora_paths(net)) == 2
    assert net.pet_config is cfg


# ---- replacement --------------------------------------------------------------------------------
def test_weights_shared_and_names_stable():
    net = llama()
    before = {path: cell for path, cell in net.cells_and_names()}
    names_before = {id(p): p.name for p in net.get_parameters()}
    get_pet_model(net, pet())
    for path in lora_paths(net):
        old = before[path]
        new = dict(net.cells_and_names())[path]
        assert new.weight is old.weight
        assert new.weight.name == f"{path}.weight"
        assert new.mindpet_delta_lora_a.name == f"{path}.mindpet_delta_lora_a"
        assert new.mindpet_delta_lora_b.name == f"{path}.mindpet_delta_lora_b"
        assert tuple(new.mindpet_delta_lora_a.shape) == (4, old.in_channels)
        assert tuple(new.mindpet_delta_lora_b.shape) == (old.out_channels, 4)
    for p in net.get_parameters():  # base names untouched, every name its path, all unique
        if "mindpet_delta_lora" not in p.name:
            assert p.name == names_before[id(p)]
    names = [p.name for p in net.get_parameters()]
    assert names == [path for path, _ in net.parameters_and_names()]
    assert len(set(names)) == len(names)


def test_freeze_leaves_only_lora_trainable_then_include_exclude():
    net = get_pet_model(llama(), pet())
    trainable = [p.name for p in net.trainable_params()]
    assert trainable and all("mindpet_delta_lora" in n for n in trainable)
    assert len(trainable) == 16
    net = get_pet_model(llama(), pet(freeze_include=["*layers.0*"], freeze_exclude=["*norm_out*"]))
    trainable = [p.name for p in net.trainable_params()]
    assert "model.norm_out.weight" in trainable
    assert not any("layers.0." in n for n in trainable)
    assert sum("mindpet_delta_lora" in n for n in trainable) == 8


def test_summary_counts():
    net = llama()
    summary = apply_lora(net, pet())
    total = sum(p.size for p in net.get_parameters())
    trainable = sum(p.size for p in net.trainable_params())
    assert summary["total"] == total and summary["trainable"] == trainable
    assert summary["percent"] == pytest.approx(100.0 * trainable / total)
    assert net.pet_summary == summary


def test_outputs_equal_while_b_is_zero_then_follow_lora(mode):  # pylint: disable=unused-argument
    net = llama()
    net.set_train(False)
    ids = Tensor(np.random.default_rng(0).integers(0, 64, (2, 8)), mstype.int32)
    before = net(ids).asnumpy()
    get_pet_model(net, pet(lora_dropout=0.05))
    net.set_train(False)
    np.testing.assert_allclose(net(ids).asnumpy(), before, rtol=0, atol=1e-6)
    # with B set the output moves
    for p in net.get_parameters():
        if p.name.endswith("mindpet_delta_lora_b"):
            p.set_data(Tensor(np.full(p.shape, 0.05, np.float32)))
    assert np.abs(net(ids).asnumpy() - before).max() > 1e-3


BLOCK_TARGET = r"body\.[02]|heads\.\d"


class Block(nn.Cell):
    """Dense layers directly inside a SequentialCell and a CellList, one of them to_float-ed."""

    def __init__(self):
        super().__init__()
        self.body = nn.SequentialCell([nn.Dense(6, 5, has_bias=True, activation="tanh"), nn.ReLU(),
                                       nn.Dense(5, 4)])
        self.heads = nn.CellList([nn.Dense(4, 3), nn.Dense(4, 3).to_float(mstype.float16)])

    def construct(self, x):
        h = self.body(x)
        return self.heads[0](h) + self.heads[1](h)


def test_sequential_cell_list_and_to_float_layers(mode):  # pylint: disable=unused-argument
    ms.set_seed(1)
    net = Block()
    x = Tensor(np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32))
    before = net(x).asnumpy()
    before_fp32 = net.heads[0](net.body(x)).asnumpy()
    get_pet_model(net, pet(BLOCK_TARGET))
    assert lora_paths(net) == ["body.0", "body.2", "heads.0", "heads.1"]
    assert all(isinstance(c, LoRADense) for c in net.body.cell_list[::2])
    fp16 = net.heads[1]
    assert fp16.dtype == mstype.float16 and fp16.get_flags().get("fp16")
    assert net.heads[0].dtype == mstype.float32
    assert net.body[0].activation_flag
    # heads.1 computes in float16: equal up to float16 rounding of the same products
    np.testing.assert_allclose(net(x).asnumpy(), before, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(net.heads[0](net.body(x)).asnumpy(), before_fp32, rtol=0, atol=1e-6)
    # the first layer follows the LoRA formula once B is set
    first = net.body[0]
    bmat = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    first.mindpet_delta_lora_b.set_data(Tensor(bmat))
    want = lora_forward(x.asnumpy(), first.weight.asnumpy(), first.bias.asnumpy(),
                        first.mindpet_delta_lora_a.asnumpy(), bmat, 2.0, "tanh")
    np.testing.assert_allclose(first(x).asnumpy(), want, rtol=1e-5, atol=1e-5)


def test_explicit_dtypes_override_inheritance():
    net = get_pet_model(Block(), pet(BLOCK_TARGET, param_init_type="float16", compute_dtype="float16"))
    cell = net.body[0]
    assert cell.dtype == mstype.float16 and cell.mindpet_delta_lora_a.dtype == mstype.float16
    assert cell.weight.dtype == mstype.float32


# ---- errors leave the network unchanged ---------------------------------------------------------
def test_zero_matches_lists_existing_dense_paths():
    net = llama()
    state = snapshot(net)
    with pytest.raises(ValueError, match="target_modules") as info:
        get_pet_model(net, pet("q_proj|k_proj"))
    assert "model.layers.0.attention.wq" in str(info.value)
    assert snapshot(net) == state


def test_wrong_type_targeted_names_path_and_type_and_changes_nothing():
    net = llama()
    net.model.norm_out.weight.requires_grad = False  # a non-default state that must survive
    state = snapshot(net)
    with pytest.raises(TypeError, match=r"model\.layers\.0\.attention_norm.*LlamaRMSNorm"):
        get_pet_model(net, pet(".*wq|attention_norm"))
    assert snapshot(net) == state
    assert not lora_paths(net)


def test_layer_level_failure_after_good_layers_changes_nothing():
    net = llama()
    state = snapshot(net)
    a_init = Tensor(np.zeros((4, 32), np.float32))  # fits wq (in 32), not w2 (in 48)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.feed_forward\.w2.*lora_a_init"):
        get_pet_model(net, pet(".*wq|.*w2", lora_a_init=a_init))
    assert snapshot(net) == state


def test_bad_config_and_network_arguments():
    net = llama()
    state = snapshot(net)
    with pytest.raises(ValueError, match="lora_rank"):
        get_pet_model(net, pet(lora_rank=0))
    with pytest.raises(ValueError, match="unknown key 'lora_ranks'"):
        get_pet_model(net, {"lora_ranks": 4, "target_modules": QKVO})
    with pytest.raises(TypeError, match="network"):
        get_pet_model("not a cell", pet())
    assert snapshot(net) == state


class Shared(nn.Cell):
    """One Dense held by two blocks (weight tying across blocks)."""

    def __init__(self):
        super().__init__()
        dense = nn.Dense(4, 4)
        self.a = nn.SequentialCell([dense])
        self.b = nn.SequentialCell([dense])

    def construct(self, x):
        return self.b(self.a(x))


def test_layer_reachable_at_two_paths_is_refused():
    net = Shared()
    state = snapshot(net)
    with pytest.raises(ValueError, match=r"two paths, a\.0 and b\.0"):
        get_pet_model(net, pet(r"[ab]\.0"))
    assert snapshot(net) == state
    with pytest.raises(ValueError, match=r"a\.0 is one layer shared with b\.0"):  # b.0 would miss the adapter
        get_pet_model(net, pet(r"[ab]\.0", exclude_layers="b"))
    assert snapshot(net) == state


def test_twice_on_the_same_layer_is_refused():
    net = get_pet_model(llama(), pet("wq"))
    with pytest.raises(ValueError, match=r"already holds 2 LoRA layers \(model\.layers\.0\.attention\.wq"):
        get_pet_model(net, pet("wq"))


# ---- the bar ------------------------------------------------------------------------------
LLAMA2_7B_PET = {"pet_type": "lora", "lora_rank": 16, "lora_alpha": 16, "lora_dropout": 0.05,
                 "target_modules": ".*wq|.*wk|.*wv|.*wo"}
SMALL = dict(hidden_size=64, num_layers=2, num_heads=8, n_kv_heads=2, vocab_size=96, seq_length=16,
             intermediate_size=96)


def expected_trainable(model_config, pet_config):
    """Σ r·(in + out) over wq, wk, wv, wo of every layer, from the configs alone."""
    h, nh = model_config["hidden_size"], model_config["num_heads"]
    nkv = model_config["n_kv_heads"]
    head = h // nh
    shapes = [(h, nh * head), (h, nkv * head), (h, nkv * head), (nh * head, h)]  # (in, out)
    r = pet_config["lora_rank"]
    return model_config["num_layers"] * sum(r * (i + o) for i, o in shapes)


def test_llama2_7b_pet_config_bar():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    net = LlamaForCausalLM(SMALL)
    base = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    get_pet_model(net, LLAMA2_7B_PET)

    loras = [c for _, c in net.cells_and_names() if isinstance(c, LoRADense)]
    assert len(loras) == 4 * SMALL["num_layers"]
    assert {c.out_channels for c in loras} == {64, 16}  # GQA: wk / wv narrower
    want = expected_trainable(SMALL, LLAMA2_7B_PET)
    assert sum(p.size for p in net.trainable_params()) == want
    assert net.pet_summary["trainable"] == want

    rng = np.random.default_rng(0)
    ids = Tensor(rng.integers(1, SMALL["vocab_size"], (2, SMALL["seq_length"] + 1)), mstype.int32)
    opt = nn.Adam(net.trainable_params(), learning_rate=1e-2)
    step = nn.TrainOneStepCell(net, opt)
    step.set_train(True)
    losses = [float(step(ids, ids).asnumpy()) for _ in range(6)]
    assert losses[-1] < losses[0] - 0.05, losses
    for p in net.get_parameters():
        if "mindpet_delta_lora" not in p.name:
            assert np.array_equal(p.asnumpy(), base[p.name]), p.name


# ---- trust at the edges ---------------------------------------------------------------------------------
class _Holder(nn.Cell):
    def __init__(self, proj):
        super().__init__()
        self.proj = proj

    def construct(self, x):
        return self.proj(x)


class _Shared(nn.Cell):
    """One Dense reachable at two paths (first.proj and second.proj)."""

    def __init__(self):
        super().__init__()
        proj = nn.Dense(4, 4)
        self.first = _Holder(proj)
        self.second = _Holder(proj)

    def construct(self, x):
        return self.first.proj(x) + self.second.proj(x)


def test_a_layer_shared_at_two_paths_is_refused_when_one_path_is_targeted():
    net = _Shared()
    before = snapshot(net)
    with pytest.raises(ValueError, match="shared with"):
        get_pet_model(net, pet(target=r"first\.proj"))
    assert snapshot(net) == before


def test_a_second_get_pet_model_is_refused():
    net = llama()
    get_pet_model(net, pet(target=".*wq"))
    before = snapshot(net)
    with pytest.raises(ValueError, match="already holds 2 LoRA layers"):
        get_pet_model(net, pet(target=".*wv"))
    assert snapshot(net) == before and net.pet_config.target_modules == ".*wq"


def test_exclude_layers_that_match_nothing_are_a_warning(caplog):
    import logging
    with caplog.at_level(logging.WARNING, logger="mindpet_lite.pet.model"):
        get_pet_model(llama(), pet(exclude_layers=[r"model\.layers\.9\..*", r".*layers\.1\..*"]))
    assert r"'model\\.layers\\.9\\..*' matches no layer" in caplog.text
    assert "layers\\.1" not in caplog.text.replace("layers\\.9", "")
