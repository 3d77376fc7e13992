"""pet_config: parse, validate and apply LoRA to whole networks."""
from mindpet_lite.pet.config import LoraConfig, load_pet_config
from mindpet_lite.pet.model import LoraPlan, apply_lora, get_pet_model, plan_lora

__all__ = ["LoraConfig", "load_pet_config", "get_pet_model", "apply_lora", "plan_lora", "LoraPlan"]
