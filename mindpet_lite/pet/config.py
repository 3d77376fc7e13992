"""LoraConfig: MindFormers' `pet_config` block, parsed and checked once.

The same object flows from the YAML to `get_pet_model` and into the adapter file's metadata, so the
scaling is never re-derived from a default. A misspelled key is an error with the closest valid key:
a silently ignored typo is the commonest way a LoRA run trains nothing.
"""
import dataclasses
import re
from typing import Any, Optional

from mindspore import Tensor
from mindspore.common.initializer import Initializer, initializer

from mindpet_lite import _checks
from mindpet_lite.pet.config_keys import PetConfigKeys
from mindpet_lite.delta.lora import lora_scaling
from mindpet_lite.delta.lora_init import parse_weight_init
from mindpet_lite.pet import variants
from mindpet_lite.pet.adapter_config import AdapterConfig, LowRankAdapterConfig
from mindpet_lite.pet.prefix_config import PrefixTuningConfig, Ptuning2Config

PET_TYPES = ("lora",)
INIT_LORA_WEIGHTS = (True, "gaussian", "pissa", "pissa_niter_<N>", "olora")  # PEFT's names


def _dtype_name(dtype):
    for name, value in _checks.FLOAT_DTYPES.items():
        if dtype == value:
            return name
    return None


@dataclasses.dataclass
class LoraConfig(PetConfigKeys):
    """LoRA settings with MindFormers' `pet_config` keys and defaults (plus `use_rslora`).

    target_modules: a regex; a cell is a target when it re.match-es the cell's attribute name (e.g.
        `wq`) or re.fullmatch-es its dotted path (`model.layers.3.attention.wq`). A list of strings
        is taken as alternatives of one regex.
    exclude_layers: a regex or list of regexes (same two rules); a matching cell is skipped with its
        whole subtree.
    param_init_type / compute_dtype: None inherits the replaced layer's dtype.
    freeze_include / freeze_exclude: MindPet globs applied after everything but LoRA is frozen.
    rank_pattern, alpha_pattern, layers_to_transform, layers_pattern, modules_to_save, loraplus_lr_ratio:
        HF PEFT's variant keys (help text on each field; matching rules in ``pet/variants.py``).
    use_dora: DoRA (PEFT's `use_dora`): a trainable magnitude per output feature of each adapted
        layer, saved as `mindpet_delta_lora_magnitude` and exported as PEFT's `lora_magnitude_vector`.
    init_lora_weights: how A and B start (PEFT's key and values): true = lora_a_init / lora_b_init;
        'gaussian' = A ~ N(0, (1/r)^2), B = 0; 'pissa' = the r principal singular vectors of W, the
        base keeping the residual; 'pissa_niter_<N>' = the same from a randomized SVD with N power
        iterations; 'olora' = the QR decomposition of W, the base keeping the residual. PiSSA /
        OLoRA adapters are saved as plain LoRA of rank 2r on the original base (adapters.io).
    """

    KEYS_NAME = "LoRA"  # errors say "a mapping of LoRA keys"

    pet_type: str = "lora"
    lora_rank: int = 8
    lora_alpha: Any = 16
    lora_dropout: float = 0.01
    lora_a_init: Any = "normal"
    lora_b_init: Any = "zero"
    param_init_type: Any = None
    compute_dtype: Any = None
    target_modules: Any = None
    exclude_layers: Any = None
    freeze_include: Optional[list] = None
    freeze_exclude: Optional[list] = None
    use_rslora: bool = False
    # ---- DoRA and the weight-based starts (issue 15, layer-level variants) ----
    use_dora: bool = False
    init_lora_weights: Any = True

    # ---- variants that HF PEFT users know (PEFT's key names; rules in pet/variants.py) -------------
    rank_pattern: dict = dataclasses.field(default_factory=dict, metadata={"help": (
        "{regex: rank} overriding lora_rank per layer: a layer takes the first key that matches the end of "
        "its dotted path at a dot boundary, re.match(r'(.*\\.)?(KEY)$', path) (PEFT's rule)")})
    alpha_pattern: dict = dataclasses.field(default_factory=dict, metadata={"help": (
        "{regex: alpha} overriding lora_alpha per layer, same rule as rank_pattern")})
    layers_to_transform: Any = dataclasses.field(default=None, metadata={"help": (
        "decoder layer index or list of indices: only targets inside these layers take LoRA; the index is "
        "the first number segment of the path (model.layers.3.attention.wq -> 3)")})
    layers_pattern: Any = dataclasses.field(default=None, metadata={"help": (
        "regex (or list) of the path segment right before the layer index, e.g. 'layers'; needs "
        "layers_to_transform")})
    modules_to_save: Any = dataclasses.field(default=None, metadata={"help": (
        "names of cells trained in full and saved in the adapter (e.g. ['lm_head']): a cell whose dotted "
        "path ends with a name (PEFT's rule); never a LoRA target")})
    loraplus_lr_ratio: Any = dataclasses.field(default=None, metadata={"help": (
        "LoRA+: B's learning rate = ratio x A's (and of 1-D trainables: DoRA magnitudes, norms), in its own "
        "optimizer group; training only, not written to PEFT")})

    def __post_init__(self):
        self.validate()

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path):
        """From a YAML file holding only the block, a `pet_config:` mapping, or a whole MindFormers
        run YAML (model.model_config.pet_config)."""
        block, section = read_pet_block(path)
        return cls.from_dict(block, section=section)

    def to_dict(self):
        """JSON-able dict (dtypes by name) that `from_dict` reads back."""
        out = dataclasses.asdict(self)
        for key in ("param_init_type", "compute_dtype"):
            if out[key] is not None:
                out[key] = _dtype_name(out[key])
        for key in ("lora_a_init", "lora_b_init"):
            if not isinstance(out[key], (str, int, float)):
                out[key] = type(out[key]).__name__
        for key in ("rank_pattern", "alpha_pattern"):  # pairs: sorted JSON would lose the first-match order
            out[key] = [[k, v] for k, v in out[key].items()]
        return out

    @property
    def scaling(self):
        """alpha / rank, or alpha / sqrt(rank) with rsLoRA (``delta.lora.lora_scaling``)."""
        return lora_scaling(self.lora_alpha, self.lora_rank, self.use_rslora)

    def rank_for(self, path):
        """The rank of the layer at ``path``: its rank_pattern value, else lora_rank."""
        key = variants.pattern_key(self.rank_pattern, path)
        return self.rank_pattern[key] if key is not None else self.lora_rank

    def alpha_for(self, path):
        """The alpha of the layer at ``path``: its alpha_pattern value, else lora_alpha."""
        key = variants.pattern_key(self.alpha_pattern, path)
        return self.alpha_pattern[key] if key is not None else self.lora_alpha

    def scaling_for(self, path):
        """The scaling of the layer at ``path`` (its own rank and alpha)."""
        return lora_scaling(self.alpha_for(path), self.rank_for(path), self.use_rslora)

    def in_layers(self, path):
        """True when layers_to_transform keeps the layer at ``path`` (always, without it)."""
        if self.layers_to_transform is None:
            return True
        return variants.layer_index(path, self.layers_pattern) in self.layers_to_transform

    def saves_module(self, path):
        """True when the cell at ``path`` is one of modules_to_save."""
        return variants.ends_with_any(path, self.modules_to_save)

    @property
    def target_regex(self):
        return re.compile(self.target_modules)

    @property
    def exclude_regexes(self):
        return [re.compile(p) for p in self.exclude_layers or []]

    # ---- validation -----------------------------------------------------------------------
    def validate(self):
        """Check every key; normalise pet_type, dtypes, and list forms of the patterns."""
        if not isinstance(self.pet_type, str) or self.pet_type.lower() not in PET_TYPES:
            raise ValueError(f"pet_type must be one of {list(PET_TYPES)}, got {_checks.describe(self.pet_type)}")
        self.pet_type = self.pet_type.lower()
        _checks.check_positive_int("lora_rank", self.lora_rank)
        _checks.check_lora_alpha("lora_alpha", self.lora_alpha)
        _checks.check_dropout("lora_dropout", self.lora_dropout)
        _checks.check_bool("use_rslora", self.use_rslora)
        _checks.check_bool("use_dora", self.use_dora)
        self._check_init_lora_weights()
        for key in ("lora_a_init", "lora_b_init"):
            self.check_init(key, getattr(self, key))
        self.param_init_type = _checks.to_float_dtype("param_init_type", self.param_init_type, allow_none=True)
        self.compute_dtype = _checks.to_float_dtype("compute_dtype", self.compute_dtype, allow_none=True)
        self.target_modules = self._check_pattern("target_modules", self.target_modules)
        if self.exclude_layers is not None:
            patterns = [self.exclude_layers] if isinstance(self.exclude_layers, str) else self.exclude_layers
            if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
                raise TypeError("exclude_layers must be a regex string or a list of regex strings, "
                                f"got {_checks.describe(self.exclude_layers)}")
            self.exclude_layers = [self._check_pattern("exclude_layers", p) for p in patterns]
        for key in ("freeze_include", "freeze_exclude"):
            value = getattr(self, key)
            if value is not None:
                _checks.check_str_list(key, value)
        self.rank_pattern = variants.check_pattern_map("rank_pattern", self.rank_pattern, "rank")
        self.alpha_pattern = variants.check_pattern_map("alpha_pattern", self.alpha_pattern, "alpha")
        self.layers_to_transform = variants.check_layers_to_transform(self.layers_to_transform)
        self.layers_pattern = variants.check_layers_pattern(self.layers_pattern, self.layers_to_transform)
        self.modules_to_save = variants.check_modules_to_save(self.modules_to_save)
        self.loraplus_lr_ratio = variants.check_loraplus_lr_ratio(self.loraplus_lr_ratio)

    def _check_init_lora_weights(self):
        value = self.init_lora_weights
        allowed = ", ".join(map(repr, INIT_LORA_WEIGHTS))
        if not (value is True or value == "gaussian" or parse_weight_init(value) is not None):
            raise ValueError(f"init_lora_weights must be one of {allowed} (N >= 0), got {_checks.describe(value)}")
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in ("lora_a_init", "lora_b_init")}
        for key, default in defaults.items():
            if value is not True and not (isinstance(getattr(self, key), str) and getattr(self, key) == default):
                raise ValueError(f"{key}={_checks.describe(getattr(self, key))} is set but init_lora_weights="
                                 f"{value!r} decides how A and B start: leave {key} at its default "
                                 f"({default!r}) or use init_lora_weights=True")

    @property
    def weight_init(self):
        """('pissa', niter) / ('olora', None) when A and B start from W (its residual stays), else None."""
        return parse_weight_init(self.init_lora_weights)

    @staticmethod
    def check_init(key, value):
        """An initializer spec a LoRA factor can be built from (a name, a number, an Initializer, a Tensor)."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float, Initializer, Tensor)):
            raise TypeError(f"{key} must be an initializer name, a number or an Initializer, "
                            f"got {_checks.describe(value)}")
        if isinstance(value, str):
            try:
                initializer(value, [1, 1])
            except ValueError as err:
                raise ValueError(f"{key} must name a mindspore initializer ('normal', 'zero', "
                                 f"'he_uniform', ...), got {_checks.describe(value)}") from err

    @staticmethod
    def _check_pattern(key, value):
        if value is None:
            raise ValueError(f"{key} is missing: give a regex of the layers to adapt, "
                             "e.g. '.*wq|.*wk|.*wv|.*wo'")
        if isinstance(value, (list, tuple)) and value and all(isinstance(p, str) and p for p in value):
            value = "|".join(f"(?:{p})" for p in value)
        if not isinstance(value, str) or not value:
            raise TypeError(f"{key} must be a non-empty regex string (or a list of them), "
                            f"got {_checks.describe(value)}")
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"{key} is not a valid regex: {value!r} ({err})") from err
        return value


def read_pet_block(path):
    """``(block, section)``: the pet_config mapping of a YAML file holding only the block, a
    `pet_config:` mapping, or a whole MindFormers run YAML (model.model_config.pet_config)."""
    data = _checks.load_mapping(path, "pet_config")
    if "model" in data:
        block = data
        for key in ("model", "model_config", "pet_config"):
            block = block.get(key) if isinstance(block, dict) else None
        if block is None:
            raise ValueError(f"{path}: a run YAML must carry model.model_config.pet_config")
        return block, f"{path}: model.model_config.pet_config"
    if "pet_config" in data:
        return data["pet_config"], f"{path}: pet_config"
    return data, path


# pet_type -> its config class: the one place a pet_type is dispatched on (pet/model.py has the
# matching table of how each is applied)
PET_CONFIGS = {"lora": LoraConfig, "adapter": AdapterConfig, "low_rank_adapter": LowRankAdapterConfig,
               "ptuning2": Ptuning2Config, "prefixtuning": PrefixTuningConfig}
CONFIG_TYPES = tuple(PET_CONFIGS.values())


def config_class(block, section="pet_config"):
    """The config class of a pet_config mapping, by its pet_type (default 'lora')."""
    pet_type = block.get("pet_type", "lora") if isinstance(block, dict) else "lora"
    if not isinstance(pet_type, str) or pet_type.lower() not in PET_CONFIGS:
        hint = _checks.closest(pet_type, PET_CONFIGS) if isinstance(pet_type, str) else None
        hint = f"; did you mean {hint!r}?" if hint else ""
        raise ValueError(f"{section}: pet_type must be one of {list(PET_CONFIGS)}, got "
                         f"{_checks.describe(pet_type)}{hint}")
    return PET_CONFIGS[pet_type.lower()]


def load_pet_config(source, section="pet_config"):
    """A pet config (one of ``CONFIG_TYPES``) from such an object, a dict, or a YAML path (block or
    whole run YAML); a dict or block is read by its pet_type."""
    if isinstance(source, CONFIG_TYPES):
        return source
    if isinstance(source, str):
        source, section = read_pet_block(source)
    if isinstance(source, dict):
        return config_class(source, section).from_dict(source, section=section)
    raise TypeError(f"{section} must be a {', '.join(c.__name__ for c in CONFIG_TYPES)}, a dict or a YAML path, "
                    f"got {_checks.describe(source)}")
