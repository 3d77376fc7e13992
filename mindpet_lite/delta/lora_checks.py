"""Argument checks of LoRADense that need MindSpore objects (initializers, activations, shard
strategies): kept beside the cell so that its constructor reads as a list of checks."""
import math
import numbers

import numpy as np
from mindspore import Tensor, nn
from mindspore import dtype as mstype
from mindspore.common.initializer import Initializer, initializer
from mindspore.ops.primitive import Primitive

from mindpet_lite import _checks

_INIT_TYPES = (str, numbers.Real, Tensor, Initializer)  # complex numbers are not LoRA factors
_INIT_DTYPES = mstype.int_type + mstype.uint_type + mstype.float_type



def check_init(name, init, shape):
    """An initializer spec `initializer()` accepts: a real, finite number; a real Tensor of the right
    shape and finite values. A lazily initialised Tensor (``Tensor(shape=..., init=One())``, as
    MindPet's users and tests pass) is materialised here (`Tensor.init_data`), in place and once:
    casting it unmaterialised kills the process (MindSpore 2.9), and its values must be known to be
    checked. Every layer it is passed to then holds the same values, as with any other Tensor."""
    allowed = "a real Tensor, a str, an Initializer or a finite real number"
    if isinstance(init, bool) or not isinstance(init, _INIT_TYPES):
        raise TypeError(f"{name} must be {allowed}, got {_checks.describe(init)}")
    if isinstance(init, numbers.Real) and not math.isfinite(init):
        raise ValueError(f"{name} must be {allowed}, got {_checks.describe(init)}")
    if isinstance(init, Tensor):
        if tuple(init.shape) != tuple(shape):
            raise ValueError(f"{name} must be a 2-D Tensor of shape {list(shape)}, got shape {list(init.shape)}")
        if init.dtype not in _INIT_DTYPES:
            raise TypeError(f"{name} must be an int or float Tensor, got a {init.dtype} Tensor")
        if init.has_init:
            init.init_data()
        if not np.isfinite(init.astype(mstype.float32).asnumpy()).all():
            raise ValueError(f"{name} must hold finite values, got a Tensor with NaN or Inf")
    if isinstance(init, str):
        try:
            initializer(init, [1, 1])  # lazy: only resolves the name
        except ValueError as err:
            raise ValueError(f"{name} must name a mindspore initializer ('normal', 'zeros', 'he_uniform', ...), "
                             f"got {_checks.describe(init)}") from err


def init_value(init, shape, dtype):
    """initializer() for specs; a Tensor keeps its values but takes the parameter dtype."""
    if isinstance(init, Tensor):
        return init.astype(dtype)
    return initializer(init, shape, dtype)


def check_activation(activation):
    """None, a name nn.get_activation knows, a Cell, or a Primitive that maps a tensor to a tensor of
    its shape (ops.Add() or ops.Dropout() would fail only at the first forward)."""
    if isinstance(activation, nn.Softmax2d) or (isinstance(activation, str) and activation == "softmax2d"):
        raise ValueError("activation softmax2d needs a 3-D or 4-D input, and a LoRADense applies its activation "
                         "to the 2-D [N, out_channels] product")
    if activation is None or isinstance(activation, nn.Cell):
        return
    if isinstance(activation, Primitive):
        probe = Tensor(np.zeros((2, 3), np.float32))
        try:  # a trial call on a tiny tensor: primitives declare neither their arity nor their outputs
            out = activation(probe)
        except Exception:  # pylint: disable=broad-except
            out = None
        if not isinstance(out, Tensor) or out.shape != probe.shape:
            raise TypeError("activation must be an element-wise Primitive (one tensor in, a tensor of its shape "
                            f"out, e.g. ops.ReLU()), got {_checks.describe(activation)}")
        return
    if not isinstance(activation, str):
        raise TypeError("activation must be a str name, a Cell, a Primitive or None, "
                        f"got {_checks.describe(activation)}")
    try:
        nn.get_activation(activation)
    except (KeyError, TypeError) as err:  # TypeError: 'threshold' needs arguments
        raise ValueError(f"activation must be a name that mindspore.nn.get_activation builds without "
                         f"arguments, got {_checks.describe(activation)}") from err


def check_strategy(name, strategy, ranks):
    """A shard strategy: one tuple of positive ints per op input, as long as that input's rank."""
    allowed = (f"a tuple of {len(ranks)} tuple(s) of positive ints, one per input of the op, of lengths "
               f"{', '.join(map(str, ranks))}")
    if not isinstance(strategy, tuple) or not all(
            isinstance(dims, tuple) and all(_checks.is_int(d) for d in dims) for dims in strategy):
        raise TypeError(f"{name} must be {allowed}, got {_checks.describe(strategy)}")
    if tuple(len(dims) for dims in strategy) != tuple(ranks) or any(d <= 0 for dims in strategy for d in dims):
        raise ValueError(f"{name} must be {allowed}, got {_checks.describe(strategy)}")
    return tuple(tuple(int(d) for d in dims) for dims in strategy)
