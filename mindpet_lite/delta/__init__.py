"""Delta (parameter-efficient) cells."""
from mindpet_lite.delta.lora import LoRADense, lora_scaling

__all__ = ["LoRADense", "lora_scaling"]
