"""Named adapters of a LoRADense beyond its first, and the math of a batch whose rows use different ones.

The first adapter of a cell is called ``"default"`` and keeps MindPet's parameter names
(``mindpet_delta_lora_a`` / ``_b``), so old files and MindFormers checkpoints load as before. Another
adapter ``name`` gets its own pair beside it, ``mindpet_delta_lora_a__<name>`` [r, in] and
``mindpet_delta_lora_b__<name>`` [out, r]: the names still hold ``mindpet_delta_lora_`` (freezing, the
base fingerprint and LoRA-name filters treat them as LoRA factors), the ``__`` keeps them from ending
in ``_a`` / ``_b`` (no file key of a single adapter resolves onto them), and the adapter's name is
readable in a checkpoint of the whole network. Each adapter has its own rank, alpha and scaling.

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
import re

import numpy as np
from mindspore import Tensor, nn, ops

from mindpet_lite import _checks

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
