"""PrefixLayer, a drop-in for MindPet's ``mindpet.delta.prefix_layer`` (the prefix-tuning
reparametrisation of Li & Liang 2021, as MindPet builds it):

    e = wte(0 .. P-1)                              P prefix tokens, [P, embed_dim]
    kv = dropout(W2·tanh(W1·e + b1) + b2)          [P, hidden_dim]
    past_key = past_value = kv

Parameter names and shapes as MindPet's (``mindpet_delta_prefixtuning_wte.embedding_table``,
``mindpet_delta_prefixtuning_control_trans.0.weight`` ...), so its checkpoints load. MindPet computes
``past_key_reparam`` / ``past_value_reparam`` once, in ``__init__``: values that training cannot change.
Here ``construct()`` computes them from the parameters on every call (so they train), and the two
attributes read the current values; key and value are the same tensor, as in MindPet. A prefix for a
whole Llama (per-layer keys and values) is ``pet_type: prefixtuning`` in pet_config.
"""
import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore import dtype as mstype

from mindpet_lite import _checks

PREFIX_MARK = "mindpet_delta_prefixtuning"  # freeze_delta's 'prefixtuning'


class PrefixLayer(nn.Cell):
    r"""The trainable prefix of prefix tuning, reparametrised by a two-layer MLP.

    Args:
        prefix_token_num (int): P, the prefix length, > 0 and a multiple of batch_size (MindPet's rule).
        batch_size (int): the training batch size, > 0.
        num_heads (int): attention heads of the model, > 0 (recorded, as in MindPet).
        hidden_dim (int): width of the keys / values, > 0.
        embed_dim (int): width of the prefix embedding, > 0.
        mid_dim (int): width of the MLP's hidden layer, > 0. Default 512.
        dropout_rate (float): dropout on the keys / values, in [0, 1). Default 0.1.

    Inputs:
        None.

    Outputs:
        Tuple (past_key, past_value) of float32 Tensors of shape (prefix_token_num, hidden_dim).

    Raises:
        TypeError: a non-int size, a non-number dropout_rate.
        ValueError: a size <= 0, prefix_token_num not a multiple of batch_size, dropout_rate outside [0, 1).
    """

    def __init__(self, prefix_token_num, batch_size, num_heads, hidden_dim, embed_dim, mid_dim=512,
                 dropout_rate=0.1):
        sizes = dict(prefix_token_num=prefix_token_num, batch_size=batch_size, num_heads=num_heads,
                     hidden_dim=hidden_dim, embed_dim=embed_dim, mid_dim=mid_dim)
        sizes = {name: _checks.check_positive_int(name, value) for name, value in sizes.items()}
        _checks.check_number("dropout_rate", dropout_rate, minimum=0.0, below=1.0)
        if sizes["prefix_token_num"] % sizes["batch_size"]:
            raise ValueError(f"prefix_token_num must be a multiple of batch_size ({batch_size}), "
                             f"got {_checks.describe(prefix_token_num)}")
        super().__init__()
        for name, value in sizes.items():
            setattr(self, name, value)
        self.dropout_rate = float(dropout_rate)
        self.input_tokens = Parameter(Tensor(np.arange(prefix_token_num), mstype.int32),
                                      name=PREFIX_MARK + "_input_tokens", requires_grad=False)
        self.mindpet_delta_prefixtuning_wte = nn.Embedding(prefix_token_num, embed_dim)
        self.mindpet_delta_prefixtuning_control_trans = nn.SequentialCell(
            nn.Dense(embed_dim, mid_dim), nn.Tanh(), nn.Dense(mid_dim, hidden_dim))
        self.dropout = nn.Dropout(p=self.dropout_rate) if self.dropout_rate > 0 else nn.Identity()

    def construct(self):
        e = self.mindpet_delta_prefixtuning_wte(self.input_tokens)
        kv = self.dropout(self.mindpet_delta_prefixtuning_control_trans(e))
        return kv, kv

    @property
    def past_key_reparam(self):
        """MindPet's attribute: the current keys, (prefix_token_num, hidden_dim)."""
        return self.construct()[0]

    @property
    def past_value_reparam(self):
        """MindPet's attribute: the current values (the same as the keys)."""
        return self.construct()[1]
