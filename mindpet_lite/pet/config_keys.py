"""What every pet config class shares: its keys are its dataclass fields, and a mapping of them builds
it with unknown keys refused (naming the closest key) before any value is checked."""
import dataclasses

from mindpet_lite import _checks


class PetConfigKeys:
    """Mixin for the pet config dataclasses (LoRA, adapters, prefixes). ``KEYS_NAME`` names the keys in
    errors ("LoRA keys"); without it the class's ``PET_TYPE`` does."""

    KEYS_NAME = None
    PET_TYPE = None

    @classmethod
    def keys(cls):
        """The pet_config keys of this method, in field order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data, section="pet_config"):
        """From a mapping of pet_config keys; unknown keys are errors naming the closest key."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise TypeError(f"{section} must be a mapping of {cls.KEYS_NAME or cls.PET_TYPE} keys, "
                            f"got {_checks.describe(data)}")
        used, _ = _checks.split_known_keys(section, data, cls.keys(), strict=True)
        return cls(**used)
