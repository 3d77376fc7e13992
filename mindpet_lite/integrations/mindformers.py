"""MindFormers support: LoRA on `mindformers.modules.layers.Linear`, and MindFormers' own pet
pipeline building mindpet_lite cells.

This is the only module of the toolkit that imports mindformers, and it does so inside functions:
importing it costs seconds and writes ./output/log in the working directory. Nothing here imports
mindformers to *recognise* a Linear: a network can only hold one if mindformers is already loaded,
so `is_linear` looks the class up in `sys.modules`.

- `LoRALinear`: a `LoRADense` over a MindFormers Linear's own weight, in either layout
  (`transpose_b=True`: weight [out, in]; `False`: [in, out]). A is [r, in], B is [out, r] in both.
- `use_mindpet_lite()`: makes `mindformers.pet.LoraModel` / `LoraAdapter` build `LoRALinear` cells
  instead of MindPet's `LoRADense`, and `integrations.mcore` cells instead of MindFormers' own
  mcore LoRA layers. Reversible: use it as a context manager, or call `.undo()`.
"""
import importlib
import importlib.util
import logging
import sys

import numpy as np
from mindspore import nn

from mindpet_lite import _checks
from mindpet_lite.delta.lora import LoRADense
from mindpet_lite.integrations.mcore import MINDFORMERS_LORA_BUILDERS

logger = logging.getLogger(__name__)

_LINEAR_MODULE = "mindformers.modules.layers"
_ADAPTER_MODULE = "mindformers.pet.tuners.lora_adapter"

__all__ = ["is_available", "is_loaded", "is_linear", "LoRALinear", "use_mindpet_lite", "build_model"]


def is_available():
    """True when mindformers is installed (found on the path; not imported by this call)."""
    return importlib.util.find_spec("mindformers") is not None


def is_loaded():
    """True when mindformers' layers module has been imported in this process."""
    return _LINEAR_MODULE in sys.modules


def _linear_class():
    module = sys.modules.get(_LINEAR_MODULE)
    return getattr(module, "Linear", None) if module is not None else None


def is_linear(cell):
    """True for a `mindformers.modules.layers.Linear` (without importing mindformers)."""
    cls = _linear_class()
    return cls is not None and isinstance(cell, cls)


def _transposed(matmul):
    """The `transpose_b` of a MatMul primitive (True: weight stored [out, in])."""
    return bool(getattr(matmul, "transpose_b", True))


class LoRALinear(LoRADense):
    """LoRADense whose base product uses the wrapped layer's MatMul primitive, so the weight may be
    stored [out, in] (`transpose_b=True`, as nn.Dense) or [in, out] (`transpose_b=False`, a
    MindFormers Linear option). The LoRA factors keep the usual shapes, A [r, in] and B [out, r];
    `delta_weight` (and so merge / unmerge) follows the weight's layout.

    Build it with `LoRALinear.from_linear(linear, ...)`. MindFormers' own LoRA adapter builds it with
    LoRADense's arguments and then assigns `matmul`, `weight`, `bias`, `bias_add` of the layer it
    replaces (see `use_mindpet_lite`); both paths give the same cell.
    """

    def __init__(self, *args, **kwargs):
        if kwargs.get("use_dora"):  # its own forward (below) has no DoRA branch
            raise ValueError("use_dora=True is supported on LoRADense (nn.Dense targets), not on LoRALinear")
        super().__init__(*args, **kwargs)
        if self.lora_dropout is None:
            # MindFormers' adapter shards `lora_dropout.dropout` under (semi-)auto parallel; a Dropout
            # with p=0 returns its input, so the graph still holds no dropout op
            self.lora_dropout = nn.Dropout(p=0.0)

    @property
    def transpose_b(self):
        return _transposed(self.matmul)

    @classmethod
    def from_linear(cls, linear, lora_rank, lora_alpha, lora_dropout=0., lora_a_init=None,
                    lora_b_init="zeros", param_init_type=None, compute_dtype=None, use_rslora=False):
        """Wrap a MindFormers Linear: the same weight and bias Parameter objects, MatMul and bias-add
        primitives (so their shard strategies carry over) and activation. param_init_type defaults
        to the weight's dtype, compute_dtype to the Linear's compute dtype.

        Raises:
            TypeError: `linear` is not a mindformers Linear, or a LoRA argument is mistyped.
            ValueError: an expert (MoE) Linear, or a LoRA argument out of range.
        """
        if not is_linear(linear):
            raise TypeError(f"linear must be a {_LINEAR_MODULE}.Linear, got {_checks.describe(linear)}")
        if getattr(linear, "expert_flag", False) or getattr(linear, "use_gmm", False):
            raise ValueError(f"a Linear with expert_num > 1 or use_gmm (MoE) is not supported, got "
                             f"expert_num={getattr(linear, 'expert_num', None)}, "
                             f"use_gmm={getattr(linear, 'use_gmm', None)}")
        transpose_b = _transposed(linear.matmul)
        expected = (linear.out_channels, linear.in_channels) if transpose_b else \
            (linear.in_channels, linear.out_channels)
        if tuple(linear.weight.shape) != expected:
            raise ValueError(f"Linear weight must have shape {list(expected)} (transpose_b={transpose_b}), "
                             f"got {list(linear.weight.shape)}")
        wdtype = linear.weight.dtype
        param_init_type = wdtype if param_init_type is None else param_init_type
        compute_dtype = getattr(linear, "dtype", wdtype) if compute_dtype is None else compute_dtype
        extra = {} if lora_a_init is None else {"lora_a_init": lora_a_init}
        activation = linear.activation if linear.activation_flag else None
        cell = cls(linear.in_channels, linear.out_channels, lora_rank, lora_alpha, lora_dropout,
                   lora_b_init=lora_b_init, param_init_type=param_init_type, compute_dtype=compute_dtype,
                   use_rslora=use_rslora, has_bias=linear.has_bias, activation=activation,
                   weight_init="zeros", bias_init="zeros", dtype=wdtype, **extra)
        cell.matmul = linear.matmul
        cell.weight = linear.weight
        if linear.has_bias:
            cell.bias = linear.bias
            cell.bias_add = linear.bias_add
        return cell

    def construct(self, x):
        """The MindFormers Linear's forward (reshape to 2-D, cast to the compute dtype, matmul with
        the Linear's own primitive, bias, activation, cast back) plus the LoRA branch. Its own
        forward rather than LoRADense's, so that it depends on the weight layout only through
        `matmul`; the LoRA primitives keep LoRADense's (and MindPet's) names so shard strategies set
        on them (by `shard` or by MindFormers' adapter) apply."""
        ori_dtype = x.dtype
        out_shape = self.shape_op(x)[:-1] + (self.out_channels,)
        x = self.cast(self.reshape(x, (-1, self.in_channels)), self.dtype)
        out = self.matmul(x, self.cast(self.weight, self.dtype))
        if not self.merged:
            h = self.lora_dropout(x)
            h = self.lora_a_matmul(h, self.cast(self.mindpet_delta_lora_a, self.dtype))  # [N, r]
            h = self.lora_b_matmul(h, self.cast(self.mindpet_delta_lora_b, self.dtype))  # [N, out]
            h = self.mul(h, self.scaling)  # on [N, out], as MindPet: MindFormers' mul strategy shards out
            out = self.add(out, h)
        if self.has_bias:
            out = self.bias_add(out, self.cast(self.bias, self.dtype))
        if self.activation_flag:
            out = self.activation(out)
        return self.reshape(self.cast(out, ori_dtype), out_shape)

    def delta_weight(self):
        """s·B·A in the weight's layout: [out, in], or [in, out] when transpose_b is False."""
        delta = super().delta_weight()
        return delta if self.transpose_b else np.ascontiguousarray(delta.T)

    def extend_repr(self):
        return f"{super().extend_repr()}, transpose_b={self.transpose_b}"


# ---- MindFormers' own pet pipeline --------------------------------------------------------------
class _Patch:
    """Handle returned by `use_mindpet_lite`: `.undo()` or leave the `with` block to restore."""

    def __init__(self, module, previous):
        self._module = module
        self._previous = previous  # {module-global name: what it was bound to}
        self.active = True

    def undo(self):
        """Put back the classes that were there before (MindPet's LoRADense, MindFormers' mcore LoRA
        layers). Idempotent."""
        if self.active:
            for name, value in self._previous.items():
                setattr(self._module, name, value)
                logger.info("%s.%s restored to %s.%s", _ADAPTER_MODULE, name, value.__module__, value.__name__)
            self.active = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()
        return False


def use_mindpet_lite():
    """Make MindFormers' LoRA pipeline build mindpet_lite cells.

    MindFormers 1.9 creates its LoRA cells in one place:
    `mindformers.pet.tuners.lora_adapter.recursive_replace_dense_cell` (called by
    `LoraAdapter.get_pet_model`, which `mindformers.pet.LoraModel` and `get_pet_model` use). For a
    Linear / Dense it calls the module-global name `LoRADense` (imported from `mindpet.delta.lora`)
    and then assigns the replaced layer's `matmul`, `weight`, `bias` and `bias_add` to it; for the
    mcore layers it calls the names `ColumnParallelLinearWithLoRA` / `RowParallelLinearWithLoRA`
    with the layer's arguments. This rebinds those names: `LoRADense` to `LoRALinear` (same
    arguments; it uses the assigned MatMul, so both Linear layouts work), the mcore ones to builders
    of `integrations.mcore` cells (a fresh layer from the same arguments, as MindFormers' classes
    build one). Nothing else in MindFormers or MindPet is touched.

    Returns a handle: `with use_mindpet_lite(): ...` restores on exit; or call `handle.undo()`.
    Imports mindformers (and so MindPet).
    """
    module = importlib.import_module(_ADAPTER_MODULE)
    if not hasattr(module, "LoRADense"):
        raise RuntimeError(f"{_ADAPTER_MODULE} has no name 'LoRADense': this MindFormers version "
                           "creates its LoRA cells elsewhere; use mindpet_lite.pet.get_pet_model instead")
    replacements = {"LoRADense": LoRALinear}
    replacements.update({name: builder for name, builder in MINDFORMERS_LORA_BUILDERS.items() if hasattr(module, name)})
    previous = {name: getattr(module, name) for name in replacements}
    for name, value in replacements.items():
        setattr(module, name, value)
        logger.info("%s.%s -> mindpet_lite %s (was %s.%s)", _ADAPTER_MODULE, name, value.__name__,
                    previous[name].__module__, previous[name].__name__)
    return _Patch(module, previous)



# ---- building a MindFormers model (the runner's Ascend path) --------------------------------------
def build_model(model_config, arch_type):
    """A MindFormers model from a run YAML's `model.model_config` (without pet_config) and
    `model.arch.type`, through MindFormers' own class registry.

    The config class is `model_config['type']` (e.g. LlamaConfig); the model class is `arch_type`
    (e.g. LlamaForCausalLM). Construction works on CPU; the forward of MindFormers' Llama needs
    Ascend kernels, which is why the runner only takes this path with device_target Ascend.
    """
    if not isinstance(model_config, dict):
        raise TypeError(f"model_config must be a mapping, got {_checks.describe(model_config)}")
    if not isinstance(arch_type, str) or not arch_type:
        raise TypeError(f"model.arch.type must name a MindFormers model class, got {_checks.describe(arch_type)}")
    # pylint: disable=import-outside-toplevel
    from mindformers.tools.register import MindFormerModuleType, MindFormerRegister
    keys = {k: v for k, v in model_config.items() if k not in ("type", "pet_config")}
    config_type = model_config.get("type") or arch_type.replace("ForCausalLM", "Config")
    for kind, name, key in ((MindFormerModuleType.CONFIG, config_type, "model.model_config.type"),
                            (MindFormerModuleType.MODELS, arch_type, "model.arch.type")):
        if not MindFormerRegister.is_exist(kind, name):
            raise ValueError(f"{key} must name a class registered in MindFormers, got {name!r}")
    config_cls = MindFormerRegister.get_cls(MindFormerModuleType.CONFIG, config_type)
    model_cls = MindFormerRegister.get_cls(MindFormerModuleType.MODELS, arch_type)
    logger.info("building mindformers %s from %s", arch_type, config_type)
    return model_cls(config_cls(**keys))
