"""pet_config: parse, validate and apply LoRA or a prefix (P-Tuning v2, prefix tuning) to whole networks."""
from mindpet_lite.pet.config import LoraConfig, load_pet_config
from mindpet_lite.pet.model import apply_lora, get_pet_model
from mindpet_lite.pet.prefix_config import PrefixTuningConfig, Ptuning2Config
from mindpet_lite.pet.prefix_model import apply_prefix

__all__ = ["LoraConfig", "Ptuning2Config", "PrefixTuningConfig", "load_pet_config", "get_pet_model", "apply_lora",
           "apply_prefix"]
