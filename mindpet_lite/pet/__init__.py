"""pet_config: parse, validate and apply LoRA to whole networks."""
from mindpet_lite.pet.config import LoraConfig, load_pet_config

__all__ = ["LoraConfig", "load_pet_config"]
