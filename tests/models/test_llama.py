"""Tests of the compact Llama against the plain-numpy reference of tests/reference.py, written from
the Llama papers' math (RMSNorm, rotary pairs (i, i + D/2), grouped-query causal attention, SwiGLU),
never from the code under test."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

from mindpet_lite.models import LlamaConfig, LlamaForCausalLM, count_params, llama_param_shapes
from mindpet_lite.models.llama import causal_lm_loss, recompute_layers
from tests.reference import reference_logits, reference_loss

ms.set_device("CPU")

TINY = dict(hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, vocab_size=64, seq_length=8,
            intermediate_size=48)
MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}


# ------------------------------------------------------------------------------------------------
# parameters for the numpy reference (float64)
# ------------------------------------------------------------------------------------------------
def params_of(net):
    """name -> float64 numpy (through float32: numpy has no bfloat16)."""
    return {name: p.astype(ms.float32).asnumpy().astype(np.float64) for name, p in net.parameters_and_names()}


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(params=list(MODES))
def mode(request):
    ms.set_context(mode=MODES[request.param])
    yield request.param
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)


def _randomize_norms(net, seed):
    """Norm weights start at ones; give them values so a mix-up of norms would show."""
    rng = np.random.default_rng(seed)
    for name, p in net.parameters_and_names():
        if name.endswith("norm.weight") or name.endswith("norm_out.weight"):
            p.set_data(Tensor(1.0 + 0.2 * rng.standard_normal(p.shape), p.dtype))


@pytest.fixture(scope="module")
def tiny():
    """One tiny net shared by the forward / loss tests, so each mode compiles each graph once."""
    ms.set_seed(1)
    net = LlamaForCausalLM(LlamaConfig.from_dict(TINY))
    _randomize_norms(net, 1)
    net.set_train(False)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, TINY["vocab_size"], (2, TINY["seq_length"] + 1)).astype(np.int32)
    labels = ids.copy()
    labels[0, :4] = -100  # a masked prompt
    labels[1, -2] = -100
    return net, ids, labels


# ------------------------------------------------------------------------------------------------
# forward and loss
# ------------------------------------------------------------------------------------------------
def test_logits_match_numpy_reference(tiny, mode):
    net, ids, _ = tiny
    logits = net(Tensor(ids))
    assert logits.dtype == ms.float32 and logits.shape == (2, TINY["seq_length"] + 1, TINY["vocab_size"])
    ref = reference_logits(params_of(net), TINY, ids)
    np.testing.assert_allclose(logits.asnumpy(), ref, rtol=0, atol=1e-4)
    # causal: the first half of the logits does not depend on later tokens
    changed = ids.copy()
    changed[:, 5:] = (changed[:, 5:] + 1) % TINY["vocab_size"]
    np.testing.assert_allclose(net(Tensor(changed)).asnumpy()[:, :5], logits.asnumpy()[:, :5], atol=1e-5)


def test_loss_matches_numpy_cross_entropy(tiny, mode):
    net, ids, labels = tiny
    loss = net(Tensor(ids), Tensor(labels))
    assert loss.shape == () and loss.dtype == ms.float32
    ref_logits = reference_logits(params_of(net), TINY, ids[:, :-1])
    expected = reference_loss(ref_logits, labels[:, 1:])
    assert abs(float(loss.asnumpy()) - expected) < 1e-5
    # all labels ignored: no division by zero
    ignored = np.full_like(labels, -100)
    assert float(net(Tensor(ids), Tensor(ignored)).asnumpy()) == 0.0


def test_causal_lm_loss_helper(pynative):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((2, 5, 7)).astype(np.float32) * 3
    labels = rng.integers(0, 7, (2, 5)).astype(np.int32)
    labels[1, 1:3] = -1
    got = causal_lm_loss(Tensor(logits), Tensor(labels), -1)
    assert abs(float(got.asnumpy()) - reference_loss(logits.astype(np.float64), labels, -1)) < 1e-5


def test_labels_shape_must_match(tiny, pynative):
    net, ids, _ = tiny
    with pytest.raises(ValueError, match="labels"):
        net(Tensor(ids), Tensor(ids[:, :-1]))


def test_too_long_input_raises(tiny, pynative):
    net, _, _ = tiny
    with pytest.raises(ValueError, match="tokens"):
        net(Tensor(np.zeros((1, TINY["seq_length"] + 2), np.int32)))


def test_tied_lm_head(pynative):
    cfg = dict(TINY, tie_word_embeddings=True, n_kv_heads=None, num_layers=1)
    ms.set_seed(2)
    net = LlamaForCausalLM(cfg)
    names = [n for n, _ in net.parameters_and_names()]
    assert "lm_head.weight" not in names and not hasattr(net, "lm_head")
    ids = np.random.default_rng(1).integers(0, 64, (2, 6)).astype(np.int32)
    ref = reference_logits(params_of(net), cfg, ids)
    np.testing.assert_allclose(net(Tensor(ids)).asnumpy(), ref, atol=1e-4)


def test_float16_compute_close_to_reference(pynative):
    """param_init_type float32, compute_dtype float16: runs, logits float32, near the reference."""
    cfg = dict(TINY, compute_dtype="float16", param_init_type="float32", num_layers=1)
    ms.set_seed(4)
    net = LlamaForCausalLM(cfg)
    assert net.model.layers[0].attention.wq.weight.dtype == ms.float32
    ids = np.random.default_rng(2).integers(0, 64, (1, 8)).astype(np.int32)
    logits = net(Tensor(ids))
    assert logits.dtype == ms.float32
    np.testing.assert_allclose(logits.asnumpy(), reference_logits(params_of(net), cfg, ids), atol=5e-3)


def test_mindformers_float16_dtypes_run_and_train(pynative):
    """The dtypes of MindFormers' llama2 YAML (float16 params, matmuls, softmax, rotary) work on CPU."""
    dtypes = {k: LLAMA2_7B[k] for k in ("compute_dtype", "layernorm_compute_type", "softmax_compute_type",
                                        "rotary_dtype", "param_init_type")}
    cfg = dict(TINY, num_layers=1, **dtypes)
    ms.set_seed(8)
    net = LlamaForCausalLM(cfg)
    assert {p.dtype for p in net.trainable_params()} == {ms.float16}
    ids = np.random.default_rng(6).integers(0, 64, (2, 9)).astype(np.int32)
    logits = net(Tensor(ids))
    assert logits.dtype == ms.float32
    np.testing.assert_allclose(logits.asnumpy(), reference_logits(params_of(net), cfg, ids), atol=1e-2)
    step = nn.TrainOneStepCell(net, nn.SGD(net.trainable_params(), learning_rate=0.5))
    losses = [float(step(Tensor(ids), Tensor(ids)).asnumpy()) for _ in range(3)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_bfloat16_params_with_float32_compute(pynative):
    """bfloat16 checkpoints' dtype: the CPU has no bfloat16 Gather/MatMul, so compute in float32."""
    cfg = dict(TINY, num_layers=1, param_init_type="bfloat16")
    ms.set_seed(9)
    net = LlamaForCausalLM(cfg)
    assert net.model.tok_embeddings.embedding_weight.dtype == ms.bfloat16
    ids = np.random.default_rng(7).integers(0, 64, (1, 8)).astype(np.int32)
    np.testing.assert_allclose(net(Tensor(ids)).asnumpy(), reference_logits(params_of(net), cfg, ids), atol=1e-4)


def test_dense_swapped_for_subclass_is_used(pynative):
    """Replacing a projection with an nn.Dense subclass via setattr changes what the model computes."""

    class Doubled(nn.Dense):
        def construct(self, x):
            return 2 * super().construct(x)

    cfg = dict(TINY, num_layers=1)
    ms.set_seed(5)
    net = LlamaForCausalLM(cfg)
    ids = Tensor(np.arange(8, dtype=np.int32).reshape(1, 8))
    attention = net.model.layers[0].attention
    new = Doubled(32, 32, has_bias=False)
    new.weight.set_data(Tensor(attention.wo.weight.asnumpy()))
    setattr(attention, "wo", new)
    p = params_of(net)
    p["model.layers.0.attention.wo.weight"] = 2 * attention.wo.weight.asnumpy().astype(np.float64)
    np.testing.assert_allclose(net(ids).asnumpy(), reference_logits(p, cfg, ids.asnumpy()), atol=1e-4)


# ------------------------------------------------------------------------------------------------
# gradients and training
# ------------------------------------------------------------------------------------------------
def _check_directional_derivatives(ref, p, grads, rng, names, eps=1e-4):
    """grads[name] . d == the central difference of the numpy loss ``ref`` along a random d."""
    for name in names:
        direction = rng.standard_normal(p[name].shape)
        plus, minus = dict(p), dict(p)
        plus[name] = p[name] + eps * direction
        minus[name] = p[name] - eps * direction
        numeric = (ref(plus) - ref(minus)) / (2 * eps)
        analytic = float(np.sum(grads[name] * direction))
        assert abs(numeric - analytic) <= 1e-3 * max(1.0, abs(numeric)), name


def test_gradient_matches_finite_difference_of_reference(pynative):
    cfg = dict(TINY, num_layers=1)
    ms.set_seed(6)
    net = LlamaForCausalLM(cfg)
    _randomize_norms(net, 6)
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 64, (2, 9)).astype(np.int32)
    labels = ids.copy()
    labels[:, :3] = -100
    weights = net.trainable_params()
    loss, grads = ms.value_and_grad(net, None, weights)(Tensor(ids), Tensor(labels))
    grads = {w.name: g.asnumpy() for w, g in zip(weights, grads)}
    assert set(grads) == set(llama_param_shapes(cfg))
    for name, g in grads.items():
        assert np.abs(g).max() > 0, f"no gradient reaches {name}"
    p = params_of(net)

    def ref(params):
        return reference_loss(reference_logits(params, cfg, ids[:, :-1]), labels[:, 1:])

    assert abs(ref(p) - float(loss.asnumpy())) < 1e-5
    _check_directional_derivatives(ref, p, grads, rng, (
        "model.layers.0.attention.wk.weight", "model.layers.0.feed_forward.w3.weight",
        "model.layers.0.attention_norm.weight", "model.tok_embeddings.embedding_weight"))


def test_recomputed_layers_give_the_reference_gradient():
    """recompute_config.recompute: the recomputing backward (GRAPH_MODE) still matches numpy."""
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = dict(TINY, num_layers=2)
    ms.set_seed(8)
    net = LlamaForCausalLM(cfg)
    _randomize_norms(net, 8)
    assert recompute_layers(net) == 2
    rng = np.random.default_rng(9)
    ids = rng.integers(0, 64, (2, 9)).astype(np.int32)
    labels = ids.copy()
    labels[:, :2] = -100
    weights = net.trainable_params()
    loss, grads = ms.jit(ms.value_and_grad(net, None, weights))(Tensor(ids), Tensor(labels))
    grads = {w.name: g.asnumpy() for w, g in zip(weights, grads)}
    p = params_of(net)

    def ref(params):
        return reference_loss(reference_logits(params, cfg, ids[:, :-1]), labels[:, 1:])

    assert abs(ref(p) - float(loss.asnumpy())) < 1e-5
    _check_directional_derivatives(ref, p, grads, rng, (
        "model.layers.0.attention.wq.weight", "model.layers.1.feed_forward.w2.weight",
        "model.layers.0.ffn_norm.weight"))


def test_training_steps_lower_the_loss(mode):
    cfg = dict(TINY, num_layers=1)
    ms.set_seed(7)
    net = LlamaForCausalLM(cfg)
    rng = np.random.default_rng(5)
    ids = Tensor(rng.integers(0, 64, (2, 9)).astype(np.int32))
    step = nn.TrainOneStepCell(net, nn.Adam(net.trainable_params(), learning_rate=1e-2))
    step.set_train()
    losses = [float(step(ids, ids).asnumpy()) for _ in range(6)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.5, losses


# ------------------------------------------------------------------------------------------------
# names and shapes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, {"tie_word_embeddings": True}, {"n_kv_heads": None, "intermediate_size": None}])
def test_param_shapes_match_real_model(extra):
    cfg = dict(TINY, **extra)
    net = LlamaForCausalLM(cfg)
    real = {name: tuple(p.shape) for name, p in net.parameters_and_names()}
    assert all(p.name == name for name, p in net.parameters_and_names())
    assert list(real.items()) == list(llama_param_shapes(cfg).items())
    assert count_params(cfg) == sum(int(np.prod(s)) for s in real.values())
    assert not any("freqs" in n or "mask" in n for n in real)  # tables are constants, not parameters


def test_mindformers_names():
    names = set(llama_param_shapes(TINY))
    for n in ("model.tok_embeddings.embedding_weight", "model.layers.1.attention.wq.weight",
              "model.layers.1.attention.wk.weight", "model.layers.1.attention.wv.weight",
              "model.layers.1.attention.wo.weight", "model.layers.0.feed_forward.w1.weight",
              "model.layers.0.feed_forward.w2.weight", "model.layers.0.feed_forward.w3.weight",
              "model.layers.0.attention_norm.weight", "model.layers.0.ffn_norm.weight",
              "model.norm_out.weight", "lm_head.weight"):
        assert n in names
    shapes = llama_param_shapes(TINY)
    assert shapes["model.layers.0.attention.wk.weight"] == (16, 32)  # 2 kv heads of 8
    assert shapes["model.layers.0.feed_forward.w2.weight"] == (32, 48)  # [out, in]


LLAMA2_7B = {  # model_config of MindFormers' llama2_7b finetune YAML
    "type": "LlamaConfig", "batch_size": 1, "seq_length": 4096, "hidden_size": 4096, "num_layers": 32,
    "num_heads": 32, "vocab_size": 32000, "multiple_of": 256, "rms_norm_eps": 1.0e-5, "bos_token_id": 1,
    "eos_token_id": 2, "pad_token_id": 0, "ignore_token_id": -100, "compute_dtype": "float16",
    "layernorm_compute_type": "float32", "softmax_compute_type": "float16", "rotary_dtype": "float16",
    "param_init_type": "float16", "use_past": False, "scaling_factor": 1.0, "theta": 10000.0,
    "extend_method": "None", "use_flash_attention": True, "fine_grain_interleave": 1, "offset": 0,
    "checkpoint_name_or_path": "llama2_7b", "repetition_penalty": 1, "max_decode_length": 512,
    "top_k": 3, "top_p": 1, "do_sample": False, "qkv_concat": False,
    "pet_config": {"pet_type": "lora", "lora_rank": 16, "target_modules": ".*wq|.*wk|.*wv|.*wo"},
}


def test_llama2_sizes():
    cfg = LlamaConfig.from_dict(LLAMA2_7B)
    assert cfg.ffn_hidden_size == 11008
    assert count_params(cfg) == 6_738_415_616
    assert count_params(dict(hidden_size=5120, num_layers=40, num_heads=40, vocab_size=32000)) == 13_015_864_320
    big = dict(hidden_size=8192, num_layers=80, num_heads=64, n_kv_heads=8, vocab_size=32000,
               ffn_dim_multiplier=1.3, multiple_of=4096)
    assert LlamaConfig.from_dict(big).ffn_hidden_size == 28672
    assert count_params(big) == 68_976_648_192
    assert llama_param_shapes(big)["model.layers.79.attention.wv.weight"] == (1024, 8192)


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------
def test_config_reads_mindformers_yaml_block():
    cfg = LlamaConfig.from_dict(LLAMA2_7B)
    assert cfg.compute_dtype == ms.float16 and cfg.layernorm_compute_type == ms.float32
    assert cfg.num_kv_heads == 32 and cfg.head_dim == 128
    assert {"type", "use_flash_attention", "pet_config", "offset", "bos_token_id"} <= set(cfg.ignored_keys)
    # use_past is the model's; the generation keys are predict mode's (infer.predict): none is "ignored"
    assert not {"use_past", "top_k", "top_p", "do_sample", "max_decode_length", "repetition_penalty",
                "eos_token_id"} & set(cfg.ignored_keys)
    assert "hidden_size" not in cfg.ignored_keys
    assert LlamaConfig.from_dict(cfg.to_dict()) == cfg


def test_intermediate_size_rule():
    def ffn(**kw):
        return LlamaConfig.from_dict(dict(TINY, intermediate_size=None, **kw)).ffn_hidden_size

    assert ffn() == 256  # int(2*4*32/3) = 85 -> next multiple of 256
    assert ffn(multiple_of=16) == 96
    assert ffn(multiple_of=16, ffn_dim_multiplier=1.5) == 128  # int(1.5*85) = 127
    assert LlamaConfig.from_dict(TINY).ffn_hidden_size == 48  # given explicitly


@pytest.mark.parametrize("key, suggestion", [("hiden_size", "hidden_size"), ("num_layer", "num_layers"),
                                             ("n_kv_head", "n_kv_heads"), ("vocab_sizes", "vocab_size"),
                                             ("rms_norm_epsilon", "rms_norm_eps")])
def test_misspelled_key_suggests_the_right_one(key, suggestion):
    with pytest.raises(ValueError, match=f"'{key}'.*did you mean '{suggestion}'"):
        LlamaConfig.from_dict(dict(TINY, **{key: 1}))


def test_unrelated_unknown_keys_are_ignored():
    cfg = LlamaConfig.from_dict(dict(TINY, some_vendor_flag=True, num_blocks=4, eos_token_id=2))
    assert cfg.ignored_keys == ["some_vendor_flag", "num_blocks"]


@pytest.mark.parametrize("changes, error, words", [
    ({"hidden_size": 0}, ValueError, ["hidden_size", "0", "> 0"]),
    ({"num_layers": -1}, ValueError, ["num_layers", "-1"]),
    ({"hidden_size": 32.0}, TypeError, ["hidden_size", "32.0", "int"]),
    ({"num_heads": 4, "n_kv_heads": 3}, ValueError, ["num_heads", "n_kv_heads", "3"]),
    ({"hidden_size": 30}, ValueError, ["hidden_size", "30", "num_heads"]),
    ({"hidden_size": 36, "num_heads": 12, "n_kv_heads": 4}, ValueError, ["even", "36", "12"]),
    ({"compute_dtype": "float8"}, TypeError, ["compute_dtype", "float8", "bfloat16"]),
    ({"tie_word_embeddings": "yes"}, TypeError, ["tie_word_embeddings", "yes", "bool"]),
    ({"rms_norm_eps": 0}, ValueError, ["rms_norm_eps", "0"]),
    ({"rms_norm_eps": "1e-5"}, TypeError, ["rms_norm_eps", "'1e-5'", "1.0e-5"]),
    ({"batch_size": 0}, ValueError, ["batch_size", "0"]),
    ({"ffn_dim_multiplier": -1.0}, ValueError, ["ffn_dim_multiplier"]),
    ({"qkv_has_bias": True}, ValueError, ["qkv_has_bias"]),
])
def test_bad_values_are_refused(changes, error, words):
    with pytest.raises(error) as info:
        LlamaConfig.from_dict(dict(TINY, **changes))
    for word in words:
        assert word in str(info.value)
    with pytest.raises(error):  # the model refuses before building anything
        LlamaForCausalLM(dict(TINY, **changes))


def test_config_must_be_a_mapping():
    with pytest.raises(TypeError, match="model_config"):
        LlamaConfig.from_dict(42)
