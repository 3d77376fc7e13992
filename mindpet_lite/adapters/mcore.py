"""The fused projections of MindFormers' mcore models, as rows of one weight: which rows are q / k / v
and which are gate / up, to split a fused LoRA (or weight) into Hugging Face's modules and back.

MindFormers 1.9.0 stores W as [out, in] (``transpose_b=True``) and packs, per decoder layer:

* ``self_attention.linear_qkv.weight`` [(nh + 2·ng)·d, hidden] (nh heads, ng query groups =
  num_key_value_heads, d = kv_channels = head_dim), laid out by
  ``use_contiguous_weight_layout_attention``:

  - False (the default; ``SelfAttention`` in ``parallel_core/training_graph/transformer/attention.py``,
    which reshapes the output to [..., ng, (nh/ng + 2)·d] and splits each group): interleaved per query
    group, ``concat([q.reshape(ng, nh/ng·d, -1), k.reshape(ng, d, -1), v.reshape(ng, d, -1)], axis=1)``
    -> for group g: its nh/ng query heads' rows, then its key head's d rows, then its value head's d
    rows (``ModelMixin.concat_qkv_interleaved`` in ``parallel_core/utils/model_mixin.py``;
    ``QKVConvertOp`` in ``checkpoint/converter/convert_op.py``, used by ``models/qwen3/utils.py``).
  - True (``SelfAttentionContiguous``): ``[Q; K; V]`` (``ModelMixin.concat_qkv_contiguous``).

* ``mlp.linear_fc1.weight`` [2·ffn, hidden] (gated MLP), laid out by ``use_interleaved_weight_layout_mlp``:

  - True (the default; ``MLPInterleaved`` in ``parallel_core/training_graph/transformer/mlp.py``, which
    reshapes the output to [..., ffn, 2]): row 2i is gate row i, row 2i+1 is up row i
    (``ModelMixin.concat_linear_fc1_interleaved``; ``ConcatConvertOp(dim=0)`` in ``models/qwen3/utils.py``
    stacks and interleaves the same way).
  - False (``MLP``): ``[gate; up]`` (``ModelMixin.concat_linear_fc1_contiguous``).

``linear_proj`` (o_proj) and ``linear_fc2`` (down_proj) are not fused. A LoRA pair on a fused layer has
one A [r, hidden] and one B [fused out, r]: each Hugging Face module gets that A and its rows of B
(and of a DoRA magnitude: its row norms are per row, so the split is exact for DoRA too), which gives
exactly its rows of s·B·A. Going back, q/k/v (gate/up) LoRAs fuse into one pair only when their A's
are equal: otherwise no rank-r pair holds them (:func:`fuse_rows` refuses).

The tensor-parallel shards of these layouts are contiguous row blocks of the fused weight (ng/tp
groups, or ffn/tp gate/up pairs, per rank), so the full logical weight above is what a gathered
checkpoint holds.
"""
import numpy as np

from mindpet_lite import _checks

__all__ = ["FusedLayout", "layout_from_config"]

QKV_LAYOUTS = ("interleaved", "contiguous")
FC1_LAYOUTS = ("interleaved", "contiguous")

# (key in metadata / MindFormers' TransformerConfig, accepted spellings in a HF config.json / Qwen3Config)
_KEYS = (("num_attention_heads", ("num_attention_heads",)),
         ("num_query_groups", ("num_query_groups", "num_key_value_heads", "n_kv_heads")),
         ("kv_channels", ("kv_channels", "head_dim")),
         ("ffn_hidden_size", ("ffn_hidden_size", "intermediate_size")))


class FusedLayout:
    """The geometry and row layouts of an mcore model's fused projections.

    Args:
        num_attention_heads, num_query_groups, kv_channels: nh, ng, d (None: linear_qkv cannot be split).
        ffn_hidden_size: ffn (None: taken from linear_fc1's rows, 2·ffn).
        qkv: 'interleaved' (MindFormers' default) or 'contiguous'.
        fc1: 'interleaved' (MindFormers' default) or 'contiguous'.
    """

    def __init__(self, num_attention_heads=None, num_query_groups=None, kv_channels=None, ffn_hidden_size=None,
                 qkv="interleaved", fc1="interleaved"):
        for key, value in (("num_attention_heads", num_attention_heads), ("num_query_groups", num_query_groups),
                           ("kv_channels", kv_channels), ("ffn_hidden_size", ffn_hidden_size)):
            if value is not None:
                _checks.check_positive_int(key, value)
        _checks.check_choice("qkv", qkv, QKV_LAYOUTS)
        _checks.check_choice("fc1", fc1, FC1_LAYOUTS)
        if num_attention_heads is not None and num_query_groups is not None and num_attention_heads % num_query_groups:
            raise ValueError(f"num_attention_heads={num_attention_heads} must be a multiple of "
                             f"num_query_groups={num_query_groups}")
        self.num_attention_heads, self.num_query_groups = num_attention_heads, num_query_groups
        self.kv_channels, self.ffn_hidden_size = kv_channels, ffn_hidden_size
        self.qkv, self.fc1 = qkv, fc1

    def to_dict(self):
        """The metadata entry ``mcore_layout`` (JSON)."""
        return {"num_attention_heads": self.num_attention_heads, "num_query_groups": self.num_query_groups,
                "kv_channels": self.kv_channels, "ffn_hidden_size": self.ffn_hidden_size,
                "qkv": self.qkv, "fc1": self.fc1}

    @classmethod
    def from_dict(cls, data):
        """From :meth:`to_dict`'s entry (unknown keys are errors)."""
        if not isinstance(data, dict):
            raise TypeError(f"mcore_layout must be a dict, got {_checks.describe(data)}")
        allowed = ("num_attention_heads", "num_query_groups", "kv_channels", "ffn_hidden_size", "qkv", "fc1")
        for key in data:
            _checks.check_choice("mcore_layout key", key, allowed)
        return cls(**data)

    # ---- rows ----------------------------------------------------------------------------------
    def qkv_rows(self, rows):
        """(q, k, v) index arrays into the ``rows`` rows of a fused linear_qkv, each in its HF module's
        row order."""
        nh, ng, d = self.num_attention_heads, self.num_query_groups, self.kv_channels
        if None in (nh, ng, d):
            raise ValueError("splitting linear_qkv needs num_attention_heads, num_query_groups (num_key_value_heads) "
                             "and kv_channels (head_dim): pass the model config (--model-config)")
        if rows != (nh + 2 * ng) * d:
            raise ValueError(f"linear_qkv has {rows} rows but (num_attention_heads + 2*num_query_groups) * kv_channels "
                             f"= ({nh} + 2*{ng}) * {d} = {(nh + 2 * ng) * d}: another model config?")
        if self.qkv == "contiguous":
            return np.arange(nh * d), nh * d + np.arange(ng * d), (nh + ng) * d + np.arange(ng * d)
        per_group = (nh // ng + 2) * d  # [q heads of the group | k | v]
        grid = np.arange(rows).reshape(ng, per_group)
        q_width = nh // ng * d
        return (grid[:, :q_width].reshape(-1), grid[:, q_width:q_width + d].reshape(-1),
                grid[:, q_width + d:].reshape(-1))

    def fc1_rows(self, rows):
        """(gate, up) index arrays into the ``rows`` rows of a fused linear_fc1."""
        if rows % 2 or (self.ffn_hidden_size is not None and rows != 2 * self.ffn_hidden_size):
            raise ValueError(f"linear_fc1 has {rows} rows; a gated MLP's fused gate/up has 2 * ffn_hidden_size"
                             + (f" = {2 * self.ffn_hidden_size}" if self.ffn_hidden_size else " (an even number)"))
        ffn = rows // 2
        if self.fc1 == "contiguous":
            return np.arange(ffn), ffn + np.arange(ffn)
        return 2 * np.arange(ffn), 2 * np.arange(ffn) + 1

    def part_rows(self, module, rows):
        """The index arrays of the HF parts of an mcore module (by its leaf): 3 for linear_qkv, 2 for
        linear_fc1, one (all rows) otherwise."""
        leaf = module.rsplit(".", 1)[-1]
        if leaf == "linear_qkv":
            return self.qkv_rows(rows)
        if leaf == "linear_fc1":
            return self.fc1_rows(rows)
        return (np.arange(rows),)


def split_rows(array, parts):
    """``array`` [rows, ...] -> its rows for each index array of ``parts``."""
    return [array[idx] for idx in parts]


def fuse_rows(arrays, parts, what):
    """The inverse of :func:`split_rows`: one array whose rows ``parts[i]`` are ``arrays[i]``."""
    rows = sum(len(idx) for idx in parts)
    for array, idx in zip(arrays, parts):
        if array.shape[0] != len(idx):
            raise ValueError(f"{what}: a part has {array.shape[0]} rows, the fused layout gives it {len(idx)}")
    out = np.empty((rows,) + arrays[0].shape[1:], dtype=arrays[0].dtype)
    for array, idx in zip(arrays, parts):
        out[idx] = array
    return out


def layout_from_config(config):
    """A :class:`FusedLayout` from a model config: a dict or object with MindFormers' mcore keys
    (num_attention_heads, num_query_groups, kv_channels, ffn_hidden_size) or Hugging Face's
    (num_key_value_heads, head_dim, intermediate_size), and MindFormers' layout switches
    ``use_contiguous_weight_layout_attention`` (default False) / ``use_interleaved_weight_layout_mlp``
    (default True). A MindFormers run YAML's ``model.model_config`` block works as it is."""
    if config is None:
        return None
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    if isinstance(config, dict) and isinstance(config.get("model"), dict):  # a whole run YAML
        inner = config["model"].get("model_config")
        if isinstance(inner, dict):
            return layout_from_config(inner)
    values = {}
    for key, spellings in _KEYS:
        for spelling in spellings:
            if get(spelling, None) is not None:
                values[key] = get(spelling)
                break
    if values.get("num_attention_heads") and not values.get("num_query_groups"):
        values["num_query_groups"] = values["num_attention_heads"]  # multi-head attention: one group per head
    if values.get("num_attention_heads") and not values.get("kv_channels") and get("hidden_size", None):
        values["kv_channels"] = get("hidden_size") // values["num_attention_heads"]
    contiguous = get("use_contiguous_weight_layout_attention", False)
    interleaved = get("use_interleaved_weight_layout_mlp", True)
    _checks.check_bool("use_contiguous_weight_layout_attention", contiguous)
    _checks.check_bool("use_interleaved_weight_layout_mlp", interleaved)
    return FusedLayout(qkv="contiguous" if contiguous else "interleaved",
                       fc1="interleaved" if interleaved else "contiguous", **values)


def fuse_lora_parts(parts, part_rows, rows, what):
    """One LoRA pair of a fused layer from its HF parts, exactly: ``parts`` is ``{part index: (A, B, s)}``
    (the parts present; a missing one gets zero rows of B), ``part_rows`` the fused layout's row indices.

    * Every A equal and every s equal: ``(A, B_fused, r, s)``, B's rows placed by the layout.
    * Otherwise no rank-r pair holds them; the parts are stacked into a rank-Σr pair: A_fused =
      [A_0; A_1; ...], and part p's rows of B_fused hold ``B_p · s_p / s`` in its own block of columns
      (zeros elsewhere), s = the first part's scaling. Then s·B_fused·A_fused has, on part p's rows,
      exactly s_p·B_p·A_p. Returns ``(A_fused, B_fused, Σr, s)``.
    """
    order = sorted(parts)
    a0, _, s0 = parts[order[0]]
    for idx in order:
        a, b, _ = parts[idx]
        if a.shape[1] != a0.shape[1] or b.shape[1] != a.shape[0] or b.shape[0] != len(part_rows[idx]):
            raise ValueError(f"{what}: part {idx} has A {list(a.shape)} and B {list(b.shape)}; the fused layout gives it "
                             f"{len(part_rows[idx])} rows of {a0.shape[1]} inputs")
    dtype = np.result_type(*[parts[i][1].dtype for i in order])
    if all(np.array_equal(parts[i][0], a0) and parts[i][2] == s0 for i in order):
        fused_b = np.zeros((rows, a0.shape[0]), dtype=dtype)
        for idx in order:
            fused_b[part_rows[idx]] = parts[idx][1]
        return a0, fused_b, a0.shape[0], s0
    total = sum(parts[i][0].shape[0] for i in order)
    fused_b, offset = np.zeros((rows, total), dtype=dtype), 0
    for idx in order:
        a, b, s = parts[idx]
        fused_b[np.ix_(part_rows[idx], np.arange(offset, offset + a.shape[0]))] = b * (s / s0)
        offset += a.shape[0]
    return np.concatenate([parts[i][0] for i in order]), fused_b, total, s0
