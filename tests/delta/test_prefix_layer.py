"""PrefixLayer: MindPet's constructor checks and parameter names; keys / values and their gradients
against the numpy MLP, in both modes; they follow the parameters (MindPet's are fixed at __init__)."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindpet_lite.delta import PrefixLayer
from tests import reference as ref


def _prefix(dropout_rate=0.0):
    return PrefixLayer(prefix_token_num=4, batch_size=2, num_heads=2, hidden_dim=6, embed_dim=5, mid_dim=7,
                       dropout_rate=dropout_rate)


def _arrays(layer):
    mlp = layer.mindpet_delta_prefixtuning_control_trans
    return (layer.mindpet_delta_prefixtuning_wte.embedding_table.asnumpy(), mlp[0].weight.asnumpy(),
            mlp[0].bias.asnumpy(), mlp[2].weight.asnumpy(), mlp[2].bias.asnumpy())


class _SumLoss(nn.Cell):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def construct(self, gk, gv):
        key, value = self.layer()
        return (key * gk).sum() + (value * gv).sum()


def test_keys_values_and_grads_match_numpy(mode):
    layer = _prefix()
    e, w1, b1, w2, b2 = _arrays(layer)
    key, value = layer()
    np.testing.assert_allclose(key.asnumpy(), ref.prefix_mlp_forward(e, w1, b1, w2, b2), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(key.asnumpy(), value.asnumpy())  # MindPet's: one tensor for both
    rng = np.random.default_rng(0)
    gk, gv = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((4, 6)).astype(np.float32)
    mlp = layer.mindpet_delta_prefixtuning_control_trans
    params = [layer.mindpet_delta_prefixtuning_wte.embedding_table, mlp[0].weight, mlp[0].bias, mlp[2].weight,
              mlp[2].bias]
    grads = ms.grad(_SumLoss(layer), grad_position=None, weights=params)(Tensor(gk), Tensor(gv))
    for got, want in zip(grads, ref.prefix_mlp_grads(e, w1, b1, w2, b2, gk + gv)):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-4, atol=1e-5)


def test_reparam_attributes_follow_the_parameters_and_names_are_mindpets():
    layer = _prefix(dropout_rate=0.1)
    assert layer.past_key_reparam.shape == (4, 6) and layer.past_value_reparam.shape == (4, 6)
    names = {p.name: p.requires_grad for p in layer.get_parameters()}
    assert names == {"mindpet_delta_prefixtuning_input_tokens": False,
                     "mindpet_delta_prefixtuning_wte.embedding_table": True,
                     "mindpet_delta_prefixtuning_control_trans.0.weight": True,
                     "mindpet_delta_prefixtuning_control_trans.0.bias": True,
                     "mindpet_delta_prefixtuning_control_trans.2.weight": True,
                     "mindpet_delta_prefixtuning_control_trans.2.bias": True}
    layer.set_train(False)  # dropout off
    before = layer.past_key_reparam.asnumpy()
    bias = layer.mindpet_delta_prefixtuning_control_trans[2].bias
    bias.set_data(bias + 1.0)
    np.testing.assert_allclose(layer.past_key_reparam.asnumpy(), before + 1.0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(prefix_token_num=10.0), TypeError, "prefix_token_num"),
    (dict(prefix_token_num=-1), ValueError, "prefix_token_num"),
    (dict(batch_size=-2), ValueError, "batch_size"),
    (dict(batch_size=3), ValueError, "prefix_token_num must be a multiple of batch_size"),
    (dict(num_heads=2.0), TypeError, "num_heads"),
    (dict(hidden_dim=-8), ValueError, "hidden_dim"),
    (dict(embed_dim=8.0), TypeError, "embed_dim"),
    (dict(mid_dim=-1), ValueError, "mid_dim"),
    (dict(dropout_rate=-0.1), ValueError, "dropout_rate"),
    (dict(dropout_rate=1.0), ValueError, "dropout_rate"),
    (dict(dropout_rate="0.1"), TypeError, "dropout_rate"),
])
def test_bad_arguments_name_the_argument(kwargs, error, name):
    args = dict(prefix_token_num=4, batch_size=2, num_heads=2, hidden_dim=8, embed_dim=8, mid_dim=8, dropout_rate=0.1)
    args.update(kwargs)
    with pytest.raises(error, match=name):
        PrefixLayer(**args)
