"""pet_config blocks of the bottleneck adapters: ``pet_type: adapter`` (``delta.AdapterDense``) and
``pet_type: low_rank_adapter`` (``delta.LowRankAdapterDense``, Compacter's low-rank projections).

The pet_type names are MindFormers' (``mindformers.pet.constants.PetType.ADAPTER`` / ``ADALORA``) and
``freeze_delta``'s modes; MindFormers 1.9 ships no config class for them, so the keys are MindPet's cell
arguments plus LoRA's targeting keys. A target is a dense layer, matched as LoRA's are (``pet/targets.py``),
replaced by the adapter cell computing with the layer's own weight. A misspelled key is an error naming
the closest one.
"""
import dataclasses
import re
from typing import Any, Optional

from mindspore.common.initializer import Initializer

from mindpet_lite import _checks
from mindpet_lite.pet.config_keys import PetConfigKeys
from mindpet_lite.delta.bottleneck import NON_LINEARITIES


def _help(text):
    return {"help": text}


def _field(default, text):
    return dataclasses.field(default=default, metadata=_help(text))


@dataclasses.dataclass
class _BottleneckConfig(PetConfigKeys):
    """What the adapter configs share: targets, dtypes, freezing, the dict / JSON round trip."""

    PET_TYPE = None

    def to_dict(self):
        """JSON-able dict (dtypes by name, an Initializer by class name) that ``from_dict`` reads back."""
        out = dataclasses.asdict(self)
        for key in ("param_init_type", "compute_dtype"):
            if out[key] is not None:
                out[key] = next(n for n, d in _checks.FLOAT_DTYPES.items() if d == out[key])
        for key, value in out.items():
            if isinstance(value, Initializer):
                out[key] = type(value).__name__
        return out

    def __post_init__(self):
        self.validate()

    @property
    def delta_mark(self):
        """The ``mindpet_delta_<mark>`` of the cells' parameters (``freeze_delta`` mode)."""
        return self.PET_TYPE

    # the targeting rule get_pet_model's planner reads (LoRA's: pet/targets.py)
    @property
    def target_regex(self):
        return re.compile(self.target_modules)

    @property
    def exclude_regexes(self):
        return [re.compile(p) for p in self.exclude_layers or []]

    @staticmethod
    def saves_module(path):  # pylint: disable=unused-argument
        return False

    @staticmethod
    def in_layers(path):  # pylint: disable=unused-argument
        return True

    def _check_common(self):
        if not isinstance(self.pet_type, str) or self.pet_type.lower() != self.PET_TYPE:
            raise ValueError(f"pet_type must be {self.PET_TYPE!r} for {type(self).__name__}, "
                             f"got {_checks.describe(self.pet_type)}")
        self.pet_type = self.pet_type.lower()
        self.target_modules = _regex("target_modules", self.target_modules)
        if self.exclude_layers is not None:
            patterns = [self.exclude_layers] if isinstance(self.exclude_layers, str) else self.exclude_layers
            if not isinstance(patterns, (list, tuple)):
                raise TypeError("exclude_layers must be a regex string or a list of regex strings, "
                                f"got {_checks.describe(self.exclude_layers)}")
            self.exclude_layers = [_regex("exclude_layers", p) for p in patterns]
        _checks.check_choice("non_linearity", self.non_linearity, NON_LINEARITIES)
        self.param_init_type = _checks.to_float_dtype("param_init_type", self.param_init_type, allow_none=True)
        self.compute_dtype = _checks.to_float_dtype("compute_dtype", self.compute_dtype, allow_none=True)
        if self.up_sampler_init not in ("zeros", "mindpet"):
            raise ValueError(f"up_sampler_init must be 'zeros' or 'mindpet', got {_checks.describe(self.up_sampler_init)}")
        for key in ("freeze_include", "freeze_exclude"):
            value = getattr(self, key)
            if value is not None:
                _checks.check_str_list(key, value)


def _regex(key, value):
    if value is None:
        raise ValueError(f"{key} is missing: give a regex of the dense layers to adapt, e.g. '.*wo|.*w2'")
    if isinstance(value, (list, tuple)) and value and all(isinstance(p, str) and p for p in value):
        value = "|".join(f"(?:{p})" for p in value)
    if not isinstance(value, str) or not value:
        raise TypeError(f"{key} must be a non-empty regex string (or a list of them), got {_checks.describe(value)}")
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"{key} is not a valid regex: {value!r} ({err})") from err
    return value


_TARGETS = ("regex of the dense layers to adapt: a cell whose attribute name re.match-es it (MindFormers' rule, "
            "'wo') or whose dotted path re.fullmatch-es it; a list is taken as alternatives. Houlsby's placement "
            "on the built-in Llama: '.*wo|.*w2' (after attention and after the feed-forward)")
_EXCLUDE = "regex or list of regexes (same two rules): a matching cell is skipped with its whole subtree"
_UP_INIT = ("how the up-projection starts: 'zeros' (the adapted model starts equal to the base, as LoRA's B) "
            "or 'mindpet' (the cells' default: MindPet's normal / xavier_uniform init, near the identity)")
_DTYPE = "float16 / float32 / bfloat16, or null to inherit the replaced layer's weight dtype"
_FREEZE_INC = "MindPet globs of parameters frozen after everything but the adapters is frozen"
_FREEZE_EXC = "MindPet globs of parameters left trainable besides the adapters"


@dataclasses.dataclass
class AdapterConfig(_BottleneckConfig):
    """Adapter (MindPet's ``AdapterDense``): h + up(act(down(h))) after each target dense layer."""

    PET_TYPE = "adapter"

    pet_type: str = _field("adapter", "'adapter'")
    target_modules: Any = _field(None, _TARGETS)
    exclude_layers: Any = _field(None, _EXCLUDE)
    bottleneck_size: int = _field(64, "features of the bottleneck, int > 0 (MindPet's default 64)")
    non_linearity: str = _field("gelu", "activation between down and up, a MindPet name ('gelu', 'relu', ...)")
    up_sampler_init: str = _field("zeros", _UP_INIT)
    param_init_type: Any = _field(None, "dtype of the adapter parameters: " + _DTYPE)
    compute_dtype: Any = _field(None, "dtype of the layer's math: " + _DTYPE)
    freeze_include: Optional[list] = _field(None, _FREEZE_INC)
    freeze_exclude: Optional[list] = _field(None, _FREEZE_EXC)

    def validate(self):
        self._check_common()
        _checks.check_positive_int("bottleneck_size", self.bottleneck_size)

    def cell_args(self):
        """Keyword arguments of ``AdapterDense.from_dense`` (dtypes: the caller's, per layer)."""
        return {"bottleneck_size": self.bottleneck_size, "non_linearity": self.non_linearity,
                "up_sampler_init": "zeros" if self.up_sampler_init == "zeros" else "normal"}


@dataclasses.dataclass
class LowRankAdapterConfig(_BottleneckConfig):
    """LowRankAdapter (MindPet's ``LowRankAdapterDense``): the adapter with rank-k projections."""

    PET_TYPE = "low_rank_adapter"

    pet_type: str = _field("low_rank_adapter", "'low_rank_adapter'")
    target_modules: Any = _field(None, _TARGETS)
    exclude_layers: Any = _field(None, _EXCLUDE)
    reduction_factor: int = _field(1, "bottleneck = out_features // reduction_factor, int in [1, out_features] "
                                      "(MindPet's default 1)")
    low_rank_size: int = _field(1, "k, the rank of each projection's weight L·R, int > 0 (MindPet's default 1)")
    low_rank_w_init: Any = _field("xavier_uniform", "initializer name of the factors (MindPet's 'xavier_uniform')")
    non_linearity: str = _field("gelu", "activation between down and up, a MindPet name ('gelu', 'relu', ...)")
    up_sampler_init: str = _field("zeros", _UP_INIT + "; 'zeros' zeroes the up-projection's right factor")
    param_init_type: Any = _field(None, "dtype of the adapter parameters: " + _DTYPE)
    compute_dtype: Any = _field(None, "dtype of the layer's math: " + _DTYPE)
    freeze_include: Optional[list] = _field(None, _FREEZE_INC)
    freeze_exclude: Optional[list] = _field(None, _FREEZE_EXC)

    def validate(self):
        self._check_common()
        _checks.check_positive_int("reduction_factor", self.reduction_factor)
        _checks.check_positive_int("low_rank_size", self.low_rank_size)
        if not isinstance(self.low_rank_w_init, (str, Initializer)):
            raise TypeError(f"low_rank_w_init must be an initializer name, got {_checks.describe(self.low_rank_w_init)}")

    def cell_args(self):
        """Keyword arguments of ``LowRankAdapterDense.from_dense`` (dtypes: the caller's, per layer)."""
        return {"reduction_factor": self.reduction_factor, "low_rank_size": self.low_rank_size,
                "low_rank_w_init": self.low_rank_w_init, "non_linearity": self.non_linearity,
                "up_sampler_init": "zeros" if self.up_sampler_init == "zeros" else None}
