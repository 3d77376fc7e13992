"""pet_config: parse, validate and apply LoRA, an adapter (Adapter, LowRankAdapter) or a prefix (P-Tuning v2,
prefix tuning) to whole networks."""
from mindpet_lite.pet.adapter_config import AdapterConfig, LowRankAdapterConfig
from mindpet_lite.pet.adapter_model import apply_adapter
from mindpet_lite.pet.config import LoraConfig, load_pet_config
from mindpet_lite.pet.model import LoraPlan, apply_lora, get_pet_model, plan_lora
from mindpet_lite.pet.prefix_config import PrefixTuningConfig, Ptuning2Config
from mindpet_lite.pet.prefix_model import apply_prefix

__all__ = ["LoraConfig", "AdapterConfig", "LowRankAdapterConfig", "Ptuning2Config", "PrefixTuningConfig",
           "load_pet_config", "get_pet_model", "apply_lora", "apply_adapter", "apply_prefix", "plan_lora", "LoraPlan"]
