"""get_pet_model with pet_type ptuning2 / prefixtuning on the built-in Llama: logits against numpy
attention with the prefix (both modes), cached generation equal to recomputation, only the prefix
trains and the loss falls, bad networks refused before any change."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn

from mindpet_lite.models import LlamaForCausalLM
from mindpet_lite.pet import get_pet_model
from tests.reference import prefix_layers, reference_logits

MODEL = dict(seq_length=15, hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, vocab_size=64,
             intermediate_size=64)
PTUNING2 = dict(pet_type="ptuning2", pre_seq_len=3, prefix_projection=True, projection_dim=8, dropout_prob=0.0)
MARK = "model.prefix_encoder.mindpet_delta_ptuning2_"
IDS = np.array([[1, 5, 7, 9, 2, 11], [3, 4, 5, 6, 7, 8]], np.int32)


def _net(pet=PTUNING2, seed=0):
    ms.set_seed(seed)
    net = get_pet_model(LlamaForCausalLM(dict(MODEL)), pet)
    rng = np.random.default_rng(seed)
    for name, p in net.parameters_and_names():  # a prefix that matters (the MLP's output is O(1))
        if "mindpet_delta" in name:
            p.set_data(Tensor((0.4 * rng.standard_normal(p.shape)).astype(np.float32)))
    net.set_train(False)
    return net


@pytest.fixture(scope="module")
def net():
    return _net()


def _reference(net, ids):
    """numpy logits of ``ids`` with the net's prefix, and without."""
    p = {n: v.asnumpy().astype(np.float64) for n, v in net.parameters_and_names()}
    prefix = prefix_layers(p[MARK + "embedding.embedding_table"], 2, 2, 8, p[MARK + "dense_in.weight"],
                           p[MARK + "dense_in.bias"], p[MARK + "dense_out.weight"], p[MARK + "dense_out.bias"])
    return reference_logits(p, MODEL, ids, prefix), reference_logits(p, MODEL, ids)


def test_logits_match_numpy_attention_with_the_prefix(mode, net):
    want, base = _reference(net, IDS)
    got = net(Tensor(IDS)).asnumpy()
    assert np.abs(want - base).max() > 1e-2  # the prefix changes the logits
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_only_the_prefix_trains_and_removing_it_gives_the_base(net):
    trainable = [n for n, p in net.parameters_and_names() if p.requires_grad]
    assert trainable == [MARK + leaf for leaf in ("embedding.embedding_table", "dense_in.weight", "dense_in.bias",
                                                   "dense_out.weight", "dense_out.bias")]
    assert [p.name for p in net.trainable_params()] == trainable  # saved under the same names
    summary = net.pet_summary
    assert summary["pet_type"] == "ptuning2" and summary["trainable"] == sum(
        p.size for p in net.trainable_params())
    ms.set_context(mode=ms.GRAPH_MODE)
    _, base = _reference(net, IDS)
    encoder = net.model.prefix_encoder
    net.set_prefix_encoder(None)
    try:
        np.testing.assert_allclose(net(Tensor(IDS)).asnumpy(), base, atol=2e-5)
    finally:
        net.set_prefix_encoder(encoder)
    assert float(np.abs(net(Tensor(IDS)).asnumpy() - base).max()) > 1e-2  # a graph of its own again


@pytest.mark.parametrize("use_past", [True, False])
def test_cached_generation_equals_recomputation(net, use_past):
    ms.set_context(mode=ms.GRAPH_MODE)
    prompts = [[1, 5, 7], [3, 4, 5, 6, 7, 8], [9]]  # right padding: each row decodes at its own position
    seqs, logits = net.generate(prompts, 5, use_past=use_past, output_logits=True)
    for b, prompt in enumerate(prompts):  # step by step: numpy's forward of the row's tokens so far
        row = seqs[b]
        for step in range(5):
            upto = len(prompt) + step
            want = _reference(net, np.array([row[:upto]]))[0][0, -1]
            np.testing.assert_allclose(logits[step][b], want, atol=2e-5)
            assert row[upto] == int(np.argmax(want))


def test_training_lowers_the_loss_and_leaves_the_base(mode):
    net = _net(seed=1)
    base = {n: p.asnumpy().copy() for n, p in net.parameters_and_names() if not p.requires_grad}
    net.set_train(True)
    params = net.trainable_params()
    opt = nn.Adam(params, learning_rate=2e-2)
    data = Tensor(np.random.default_rng(0).integers(0, 64, (4, 12)).astype(np.int32))

    def loss_of(x):
        return net(x, x)

    grad_fn = ms.value_and_grad(loss_of, None, params)
    losses = []
    for _ in range(6):
        loss, grads = grad_fn(data)
        opt(grads)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.05
    assert all(np.array_equal(p.asnumpy(), base[n]) for n, p in net.parameters_and_names() if n in base)


def test_prefixtuning_names_and_bad_networks():
    net = _net(dict(pet_type="prefixtuning", prefix_token_num=2, mid_dim=4, dropout_rate=0.0))
    assert all("mindpet_delta_prefixtuning_" in p.name for p in net.trainable_params())
    with pytest.raises(ValueError, match="already holds a prefix encoder"):
        get_pet_model(net, PTUNING2)
    with pytest.raises(TypeError, match="set_prefix_encoder"):
        get_pet_model(nn.Dense(3, 3), PTUNING2)
    lora = get_pet_model(LlamaForCausalLM(dict(MODEL)), dict(target_modules=".*wq", lora_dropout=0.0))
    names = sorted(n for n, _ in lora.parameters_and_names())
    with pytest.raises(ValueError, match="LoRA layers"):
        get_pet_model(lora, PTUNING2)
    assert sorted(n for n, _ in lora.parameters_and_names()) == names  # unchanged
    with pytest.raises(ValueError, match="num_layers, num_heads, kv_channels"):
        from mindpet_lite.delta import PrefixEncoder
        lora.set_prefix_encoder(PrefixEncoder(2, 2, 4, 8, False, 4, 0.0))  # 4 heads, the model has 2 KV heads
