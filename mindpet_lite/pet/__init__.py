"""pet_config: parse, validate and apply LoRA to whole networks."""
from mindpet_lite.pet.config import LoraConfig, load_pet_config
from mindpet_lite.pet.model import apply_lora, get_pet_model

__all__ = ["LoraConfig", "load_pet_config", "get_pet_model", "apply_lora"]
