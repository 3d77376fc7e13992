"""pet_config blocks of MindFormers' prefix methods: ``pet_type: ptuning2`` (P-Tuning v2) and
``pet_type: prefixtuning``, with MindFormers' keys and defaults (``mindformers/pet/pet_config.py``).

Both put trainable keys / values before every attention layer's (``delta.PrefixEncoder``); they differ
in names only as MindFormers has them: ptuning2 says ``pre_seq_len`` / ``prefix_projection`` /
``projection_dim`` / ``dropout_prob``, prefixtuning ``prefix_token_num`` / ``mid_dim`` /
``dropout_rate`` and always projects. A misspelled key is an error naming the closest one.
"""
import dataclasses
from typing import Optional

from mindpet_lite import _checks
from mindpet_lite.pet.config_keys import PetConfigKeys


def _help(text):
    return {"help": text}


@dataclasses.dataclass
class _PrefixConfigBase(PetConfigKeys):
    """What the two prefix configs share: the freeze keys, the dict / JSON round trip, the checks."""

    def to_dict(self):
        """JSON-able dict that ``from_dict`` reads back."""
        return dataclasses.asdict(self)

    def __post_init__(self):
        self.validate()

    def _check_common(self):
        if not isinstance(self.pet_type, str) or self.pet_type.lower() != self.PET_TYPE:
            raise ValueError(f"pet_type must be {self.PET_TYPE!r} for {type(self).__name__}, "
                             f"got {_checks.describe(self.pet_type)}")
        self.pet_type = self.pet_type.lower()
        for key in ("freeze_include", "freeze_exclude"):
            value = getattr(self, key)
            if value is not None:
                _checks.check_str_list(key, value)

    @property
    def delta_mark(self):
        """The ``mindpet_delta_<mark>`` of the encoder's parameters (``freeze_delta`` mode)."""
        return self.PET_TYPE

    def encoder_args(self):
        """``(pre_seq_len, prefix_projection, projection_dim, dropout_prob)`` of ``delta.PrefixEncoder``."""
        raise NotImplementedError


@dataclasses.dataclass
class Ptuning2Config(_PrefixConfigBase):
    """P-Tuning v2 (MindFormers' ``Ptuning2Config``): a trainable prefix of keys / values per layer."""

    PET_TYPE = "ptuning2"

    pet_type: str = "ptuning2"
    pre_seq_len: int = dataclasses.field(default=128, metadata=_help(
        "prefix length T: key / value slots before the sequence's in every attention layer, int > 0"))
    prefix_projection: bool = dataclasses.field(default=False, metadata=_help(
        "pass the prefix table through a two-layer tanh MLP (trained with it); false trains the table directly"))
    projection_dim: int = dataclasses.field(default=128, metadata=_help(
        "hidden size of the prefix_projection MLP, int > 0 (read only with prefix_projection)"))
    dropout_prob: float = dataclasses.field(default=0.01, metadata=_help(
        "dropout on the prefix keys / values in training, float in [0, 1)"))
    freeze_include: Optional[list] = dataclasses.field(default=None, metadata=_help(
        "MindPet globs of parameters frozen after everything but the prefix encoder is frozen"))
    freeze_exclude: Optional[list] = dataclasses.field(default=None, metadata=_help(
        "MindPet globs of parameters left trainable besides the prefix encoder"))

    def validate(self):
        self._check_common()
        _checks.check_positive_int("pre_seq_len", self.pre_seq_len)
        _checks.check_bool("prefix_projection", self.prefix_projection)
        _checks.check_positive_int("projection_dim", self.projection_dim)
        _checks.check_dropout("dropout_prob", self.dropout_prob)

    def encoder_args(self):
        return self.pre_seq_len, self.prefix_projection, self.projection_dim, self.dropout_prob


@dataclasses.dataclass
class PrefixTuningConfig(_PrefixConfigBase):
    """Prefix tuning (MindFormers' ``PrefixTuningConfig``): P-Tuning v2 that always projects."""

    PET_TYPE = "prefixtuning"

    pet_type: str = "prefixtuning"
    prefix_token_num: int = dataclasses.field(default=128, metadata=_help(
        "prefix length T: key / value slots before the sequence's in every attention layer, int > 0"))
    mid_dim: int = dataclasses.field(default=512, metadata=_help(
        "hidden size of the tanh MLP the prefix table passes through, int > 0"))
    dropout_rate: float = dataclasses.field(default=0.1, metadata=_help(
        "dropout on the prefix keys / values in training, float in [0, 1)"))
    freeze_include: Optional[list] = dataclasses.field(default=None, metadata=_help(
        "MindPet globs of parameters frozen after everything but the prefix encoder is frozen"))
    freeze_exclude: Optional[list] = dataclasses.field(default=None, metadata=_help(
        "MindPet globs of parameters left trainable besides the prefix encoder"))

    def validate(self):
        self._check_common()
        _checks.check_positive_int("prefix_token_num", self.prefix_token_num)
        _checks.check_positive_int("mid_dim", self.mid_dim)
        _checks.check_dropout("dropout_rate", self.dropout_rate)

    def encoder_args(self):
        return self.prefix_token_num, True, self.mid_dim, self.dropout_rate
