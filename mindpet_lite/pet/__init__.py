"""pet_config: parse, validate and apply LoRA or an adapter (Adapter, LowRankAdapter) to whole networks."""
from mindpet_lite.pet.adapter_config import AdapterConfig, LowRankAdapterConfig
from mindpet_lite.pet.adapter_model import apply_adapter
from mindpet_lite.pet.config import LoraConfig, load_pet_config
from mindpet_lite.pet.model import LoraPlan, apply_lora, get_pet_model, plan_lora

__all__ = ["LoraConfig", "AdapterConfig", "LowRankAdapterConfig", "load_pet_config", "get_pet_model", "apply_lora",
           "apply_adapter", "plan_lora", "LoraPlan"]
