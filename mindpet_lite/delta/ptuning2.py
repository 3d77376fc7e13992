"""P-Tuning v2 / prefix tuning: the cell that makes every layer's prefix keys and values (MindPet's
``PrefixEncoder``, https://arxiv.org/abs/2110.07602).

The prefix is a trainable table of ``pre_seq_len`` rows, each row holding the keys and values of every
layer: ``[pre_seq_len, num_layers * 2 * num_heads * kv_channels]``, optionally passed through a
two-layer tanh MLP (``prefix_projection``, MindPet's: out_dim -> projection_dim -> out_dim). A row
unpacks as ``[num_layers * 2, num_heads, kv_channels]``: index ``2l`` is layer ``l``'s key, ``2l + 1``
its value (HF PEFT's prefix layout, so a table is exchanged with PEFT as it is).

``construct(batch_size, dtype)`` returns a tuple of ``num_layers`` tensors; with the default
``out_perm=(2, 0, 3, 1, 4)`` each is ``[2, batch_size, num_heads, pre_seq_len, kv_channels]``
(key, value). The cell knows no model and no config: ``pet/prefix_model.py`` builds it for a network.
"""
import numpy as np

import mindspore as ms
from mindspore import dtype as mstype
from mindspore import nn, ops
from mindspore.common.initializer import initializer

from mindpet_lite import _checks

__all__ = ["PrefixEncoder", "PrefixTuningEncoder"]

_OUT_RANK = 5  # [B, pre_seq_len, 2 * layers, heads, kv_channels]


def _check_out_perm(out_perm):
    """A permutation of the 5 axes whose first axis is the ``2 * num_layers`` one (axis 2): the tuple
    is split into layers along it."""
    if not isinstance(out_perm, (tuple, list)) or not all(_checks.is_int(a) for a in out_perm) \
            or sorted(out_perm) != list(range(_OUT_RANK)) or out_perm[0] != 2:
        raise ValueError("out_perm must be a permutation of (0, 1, 2, 3, 4) starting with 2 (the 2 * num_layers "
                         f"axis, split into layers), e.g. (2, 0, 3, 1, 4); got {_checks.describe(out_perm)}")
    return tuple(int(a) for a in out_perm)


def _parallel(parallel_config):
    """(data_parallel, model_parallel, vocab_emb_dp) of a MindFormers-style parallel_config, or (1, 1, True)."""
    if parallel_config is None:
        return 1, 1, True
    dp = _checks.check_positive_int("parallel_config.data_parallel", getattr(parallel_config, "data_parallel", None))
    mp = _checks.check_positive_int("parallel_config.model_parallel", getattr(parallel_config, "model_parallel", None))
    return dp, mp, _checks.check_bool("parallel_config.vocab_emb_dp", getattr(parallel_config, "vocab_emb_dp", True))


class PrefixEmbedding(nn.Cell):
    """The prefix table ``embedding_table [vocab_size, embedding_size]`` and its row lookup (MindPet's)."""

    def __init__(self, vocab_size, embedding_size, data_parallel=1, model_parallel=1, vocab_emb_dp=True,
                 param_init="normal", param_init_type=mstype.float32):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.embedding_table = ms.Parameter(initializer(param_init, [vocab_size, embedding_size], param_init_type),
                                            name="embedding_table", parallel_optimizer=False)
        if vocab_emb_dp:
            self.gather = ops.Gather().shard(((1, 1), (data_parallel, 1)))
        else:
            if vocab_size % model_parallel != 0:
                raise ValueError(f"pre_seq_len {vocab_size} must be a multiple of model_parallel "
                                 f"{model_parallel} when vocab_emb_dp is False")
            self.gather = ops.Gather().shard(((model_parallel, 1), (data_parallel, 1)))

    def construct(self, input_ids):
        return self.gather(self.embedding_table, input_ids, 0)


class PrefixEncoder(nn.Cell):
    """Every layer's prefix keys / values, from a trainable table (MindPet's P-Tuning v2 cell).

    Args:
        pre_seq_len (int): prefix length, > 0.
        num_layers (int): transformer layers of the model, > 0.
        num_heads (int): key / value heads of the model's attention (its KV heads under grouped-query
            attention), > 0.
        kv_channels (int): size of one head, > 0.
        prefix_projection (bool): pass the table through the tanh MLP (its weights train too).
        projection_dim (int): the MLP's hidden size, > 0 (checked only with ``prefix_projection``).
        dropout_prob (float): dropout on the keys / values in training, in [0, 1).
        parallel_config: an object with ``data_parallel``, ``model_parallel``, ``vocab_emb_dp``
            (MindFormers' ``parallel_config``), or None.
        out_perm (tuple): how the ``[B, pre_seq_len, 2 * num_layers, num_heads, kv_channels]`` result is
            transposed before the split into layers; must start with 2.

    Inputs:
        - **batch_size** (int) - rows of the batch.
        - **dtype** - the dtype of the result (default float16, as MindPet).

    Outputs:
        A tuple of ``num_layers`` tensors, each ``[2, batch_size, num_heads, pre_seq_len, kv_channels]``
        with the default ``out_perm``.

    Raises:
        TypeError, ValueError: a bad argument (named), before anything is built.
    """

    _MARK = "ptuning2"  # parameter names: mindpet_delta_<mark>_*, what freeze_delta(net, mark) keeps

    def __init__(self, pre_seq_len, num_layers, num_heads, kv_channels, prefix_projection, projection_dim,
                 dropout_prob, parallel_config=None, out_perm=(2, 0, 3, 1, 4)):
        super().__init__()
        self.pre_seq_len = _checks.check_positive_int("pre_seq_len", pre_seq_len)
        self.num_layers = _checks.check_positive_int("num_layers", num_layers)
        self.num_heads = _checks.check_positive_int("num_heads", num_heads)
        self.kv_channels = _checks.check_positive_int("kv_channels", kv_channels)
        self.prefix_projection = _checks.check_bool("prefix_projection", prefix_projection)
        if self.prefix_projection:
            self.projection_dim = _checks.check_positive_int("projection_dim", projection_dim)
        self.dropout_prob = _checks.check_dropout("dropout_prob", dropout_prob)
        self.out_perm = _check_out_perm(out_perm)
        dp, mp, vocab_emb_dp = _parallel(parallel_config)

        mark = f"mindpet_delta_{self._MARK}"
        self.out_embed_dim = self.num_layers * 2 * self.num_heads * self.kv_channels
        # the row indices 0..pre_seq_len-1: MindPet keeps them as a frozen Parameter
        # (mindpet_delta_ptuning2_prefix); a constant here, so no checkpoint or init can change them
        self.prefix_tokens = ms.Tensor(np.arange(self.pre_seq_len, dtype=np.int32))
        setattr(self, f"{mark}_embedding", PrefixEmbedding(self.pre_seq_len, self.out_embed_dim, dp, mp, vocab_emb_dp))
        self._embedding = f"{mark}_embedding"
        if self.prefix_projection:
            setattr(self, f"{mark}_dense_in", nn.Dense(self.out_embed_dim, self.projection_dim))
            setattr(self, f"{mark}_tanh", nn.Tanh())
            setattr(self, f"{mark}_dense_out", nn.Dense(self.projection_dim, self.out_embed_dim))
        self._dense_in, self._tanh, self._dense_out = f"{mark}_dense_in", f"{mark}_tanh", f"{mark}_dense_out"
        self.dropout = nn.Dropout(p=self.dropout_prob)
        self.expand_dims = ops.ExpandDims()
        self.tile = ops.Tile()
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()
        self.transpose = ops.Transpose()
        self.split_layers = ops.Split(axis=0, output_num=self.num_layers)

    def construct(self, batch_size, dtype=mstype.float16):
        tokens = self.tile(self.expand_dims(self.prefix_tokens, 0), (batch_size, 1))
        kv = getattr(self, self._embedding)(tokens)  # [B, T, out_embed_dim]
        if self.prefix_projection:
            # 3-D input: nn.Dense folds the leading axes itself
            kv = getattr(self, self._dense_out)(getattr(self, self._tanh)(getattr(self, self._dense_in)(kv)))
        kv = self.cast(kv, dtype)
        kv = self.reshape(kv, (batch_size, self.pre_seq_len, self.num_layers * 2, self.num_heads, self.kv_channels))
        kv = self.dropout(kv)
        return self.split_layers(self.transpose(kv, self.out_perm))

    def shard(self, data_parallel, model_parallel):
        """Parallel strategies of the encoder's operators (semi-auto / auto parallel; ignored elsewhere),
        MindPet's: the batch axis split ``data_parallel`` ways, the MLP's output ``model_parallel`` ways."""
        dp = _checks.check_positive_int("data_parallel", data_parallel)
        mp = _checks.check_positive_int("model_parallel", model_parallel)
        if self.prefix_projection:
            for name in (self._dense_in, self._dense_out):
                dense = getattr(self, name)
                dense.matmul.shard(((dp, 1), (mp, 1)))
                dense.bias_add.shard(((dp, 1), (1,)))
            getattr(self, self._tanh).tanh.shard(((dp, 1, 1),))
        self.cast.shard(((dp, 1, 1),))
        self.dropout.dropout.shard(((dp, 1, 1, 1, 1),))
        self.transpose.shard(((dp, 1, 1, 1, 1),))
        self.split_layers.shard(((1, dp, 1, 1, 1),))
        return self


class PrefixTuningEncoder(PrefixEncoder):
    """``PrefixEncoder`` whose parameters are named ``mindpet_delta_prefixtuning_*`` (MindFormers'
    ``pet_type: prefixtuning``, which always projects)."""

    _MARK = "prefixtuning"

