"""Named adapters of a LoRADense beyond its first, and the math of a batch whose rows use different ones.

The first adapter of a cell is called ``"default"`` and keeps MindPet's parameter names
(``mindpet_delta_lora_a`` / ``_b``), so old files and MindFormers checkpoints load as before. Another
adapter ``name`` gets its own pair beside it, ``mindpet_delta_lora_a__<name>`` [r, in] and
``mindpet_delta_lora_b__<name>`` [out, r]: the names still hold ``mindpet_delta_lora_`` (freezing, the
base fingerprint and LoRA-name filters treat them as LoRA factors), the ``__`` keeps them from ending
in ``_a`` / ``_b`` (no file key of a single adapter resolves onto them), and the adapter's name is
readable in a checkpoint of the whole network. Each adapter has its own rank, alpha and scaling.
`NamedAdapters` gives the cell its methods for them (add, delete, activate, describe, prepare a mix);
the forward that reads them stays in ``lora.py``.

Mixed batch (each row its own adapter, one forward). ``rows`` is a float ``[B, K]`` one-hot over the
network's K adapters in :func:`list order <mindpet_lite.graph.adapters.list_adapters>` (a zero row is
the base model). A cell concatenates the adapters it holds, ``A_cat = [A_1; ...; A_m]`` [R, in] and
``B_cat = [B_1 ... B_m]`` [out, R] (R = the sum of their ranks), and holds ``E`` [K, R] with ``s_k``
in adapter k's R-columns (a network adapter the cell does not hold has a zero row of E: its rows
see the base weight here). Then, for a token of batch row b,

    y = x·Wᵀ + ((x·A_catᵀ) ⊙ (rows·E)[b])·B_catᵀ

one skinny matmul pair for all adapters instead of one pair per adapter; a row's other adapters
are multiplied by exact zeros, so its output is its own adapter's up to float summation order.
"""
import math
import re

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeUniform

from mindpet_lite import _checks
from mindpet_lite.delta.lora_checks import check_init, init_value

DEFAULT_ADAPTER = "default"
BASE_ROW = "__base__"  # the adapter_names entry of a row that runs the base model (PEFT's word)
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_SEP = "__"


def check_adapter_name(name):
    """A new adapter's name: a letter, then up to 63 letters, digits or '_'; not 'default'."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"adapter_name must be a letter followed by up to 63 letters, digits or '_' "
                         f"(it becomes part of parameter names), got {_checks.describe(name)}")
    if name == DEFAULT_ADAPTER:
        raise ValueError(f"adapter_name {name!r} is the first adapter's (the layer's own "
                         "mindpet_delta_lora_a / _b): choose another name")
    return name


def pair_names(a_name, b_name, adapter):
    """Parameter names of ``adapter``'s factors, given the first adapter's ``a_name`` / ``b_name``."""
    if adapter == DEFAULT_ADAPTER:
        return a_name, b_name
    return f"{a_name}{_SEP}{adapter}", f"{b_name}{_SEP}{adapter}"


def adapter_of_param(name, a_name, b_name):
    """The adapter a parameter name belongs to (``"default"`` for the first pair), or None."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in (a_name, b_name):
        return DEFAULT_ADAPTER
    for stem in (a_name, b_name):
        if leaf.startswith(stem + _SEP):
            return leaf[len(stem) + len(_SEP):]
    return None


def mix_expansion(columns, held, dtype):
    """E [K, R] of a cell: ``columns`` the network's adapter names (K, in order), ``held`` the cell's
    ``[(name, rank, scaling)]`` in concatenation order. Row k holds s_k over adapter k's R-columns."""
    total = sum(rank for _, rank, _ in held)
    expand = np.zeros((len(columns), total), np.float32)
    start = 0
    for name, rank, scaling in held:
        expand[columns.index(name), start:start + rank] = scaling
        start += rank
    return Tensor(expand, dtype)


class MixedLoRAMatMul(nn.Cell):
    """The LoRA branch of a mixed batch: ((x·A_catᵀ) ⊙ per-row scales)·B_catᵀ (see the module text)."""

    def __init__(self):
        super().__init__()
        self.matmul = ops.MatMul()
        self.matmul_tb = ops.MatMul(transpose_b=True)

    def construct(self, x, rows, lora_a, lora_b, expand):
        """x [B·S, in] (rows of batch row b contiguous), rows [B, K], lora_a [R, in], lora_b [out, R],
        expand [K, R]. Returns [B·S, out]."""
        batch = rows.shape[0]
        n, r = x.shape[0], lora_a.shape[0]
        scale = self.matmul(rows, expand)  # [B, R]: s_k over the row's adapter's columns, 0 elsewhere
        scale = ops.reshape(ops.broadcast_to(ops.reshape(scale, (batch, 1, r)), (batch, n // batch, r)), (n, r))
        return self.matmul_tb(self.matmul_tb(x, lora_a) * scale, lora_b)


class NamedAdapters:
    """LoRADense's methods for its named adapters (a mixin: the cell supplies ``first_pair``, the first
    adapter's parameter names, ``scaling_rule`` and ``_recompile``; the state is set in its __init__)."""

    def adapter_names(self):
        """The adapters this cell holds, the first ("default") first, then in the order added."""
        return [DEFAULT_ADAPTER] + list(self.extra_adapters)

    def adapter_spec(self, name):
        """``(rank, alpha, use_rslora, scaling)`` of a held adapter."""
        if name == DEFAULT_ADAPTER:
            return self.lora_rank, self.lora_alpha, self.use_rslora, self.scaling
        if name not in self.extra_adapters:
            raise ValueError(f"unknown adapter {name!r}: this LoRADense holds {self.adapter_names()}")
        return self.extra_adapters[name]

    def named_adapter_parameters(self, name):
        """``{A name: A, B name: B}`` of a held adapter, under the first adapter's names whichever it is
        (the names a single-adapter file uses)."""
        self.adapter_spec(name)
        return {first: getattr(self, own) for first, own in zip(self.first_pair, pair_names(*self.first_pair, name))}

    def add_adapter(self, name, lora_rank, lora_alpha, lora_a_init=HeUniform(negative_slope=math.sqrt(5)),
                    lora_b_init="zeros", use_rslora=False, param_init_type=None):
        """Hold one more adapter ``name`` (own A [r, in], B [out, r], scaling); the active one is unchanged.
        param_init_type defaults to the first adapter's. Checked before anything is added."""
        check_adapter_name(name)
        if name in self.extra_adapters:
            raise ValueError(f"adapter_name {name!r} is already used by this LoRADense (it holds "
                             f"{self.adapter_names()}): delete_adapter it first or choose another name")
        lora_rank = _checks.check_positive_int("lora_rank", lora_rank)
        lora_alpha = _checks.check_lora_alpha("lora_alpha", lora_alpha)
        _checks.check_bool("use_rslora", use_rslora)
        dtype = self.mindpet_delta_lora_a.dtype if param_init_type is None else param_init_type
        dtype = _checks.to_float_dtype("param_init_type", dtype)
        check_init("lora_a_init", lora_a_init, (lora_rank, self.in_channels))
        check_init("lora_b_init", lora_b_init, (self.out_channels, lora_rank))
        a_name, b_name = pair_names(*self.first_pair, name)
        setattr(self, a_name, Parameter(init_value(lora_a_init, [lora_rank, self.in_channels], dtype), name=a_name,
                                        requires_grad=self.mindpet_delta_lora_a.requires_grad))
        setattr(self, b_name, Parameter(init_value(lora_b_init, [self.out_channels, lora_rank], dtype), name=b_name,
                                        requires_grad=self.mindpet_delta_lora_b.requires_grad))
        self.extra_adapters[name] = (lora_rank, lora_alpha, use_rslora, self.scaling_rule(lora_alpha, lora_rank, use_rslora))
        self._mix_expand = None  # the network's columns changed: set_mix_columns again before mixing
        return self

    def delete_adapter(self, name):
        """Drop a named adapter and its parameters; if it was active the cell runs the first adapter.
        The first adapter ("default", the layer's own names) cannot be deleted."""
        if name == DEFAULT_ADAPTER:
            raise ValueError("the first adapter 'default' holds the layer's own mindpet_delta_lora_a / _b and "
                             "cannot be deleted: set_active_adapter(None) runs the base layer")
        self.adapter_spec(name)
        if self.active_adapter == name:
            self.set_active_adapter(DEFAULT_ADAPTER)
        for param_name in pair_names(*self.first_pair, name):
            delattr(self, param_name)
        del self.extra_adapters[name]
        self._mix_expand = None
        self._recompile()
        return self

    def set_active_adapter(self, name):
        """The adapter the forward uses: a held name, or None for the base layer (recompiles on change)."""
        if name is not None:
            self.adapter_spec(name)
        if self.merged and name != DEFAULT_ADAPTER:
            raise ValueError(f"this LoRADense is merged (W holds the 'default' adapter): unmerge() it before "
                             f"activating {'no adapter' if name is None else repr(name)}")
        if name == self.active_adapter:
            return self
        self.active_adapter = name
        self._active_extra = None
        if name is not None and name != DEFAULT_ADAPTER:
            self._active_extra = pair_names(*self.first_pair, name)
            self.extra_folded_matmul.scaling = self.extra_adapters[name][3]
        self._recompile()
        return self

    def set_mix_columns(self, columns):
        """Prepare mixed batches: ``columns`` the network's adapter names in the order of the one-hot
        ``rows`` columns (the ones this cell does not hold see the base layer)."""
        columns = list(columns)
        if getattr(self, "use_dora", False):
            raise ValueError("a DoRA LoRADense cannot run a mixed batch (the mixed branch is plain LoRA)")
        held = [(name,) + tuple(self.adapter_spec(name)[i] for i in (0, 3)) for name in self.adapter_names()
                if name in columns]
        pairs = tuple(pair_names(*self.first_pair, name) for name, _, _ in held)
        expand = mix_expansion(columns, held, self.dtype) if held else None
        if pairs != self._mix_pairs or self._mix_expand is None or expand is None or \
                not np.array_equal(expand.asnumpy(), self._mix_expand.asnumpy()):
            self._mix_pairs, self._mix_expand = pairs, expand
            self._recompile()
        return self
