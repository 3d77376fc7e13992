"""Delta (parameter-efficient) cells."""
from mindpet_lite.delta.lora import LoRADense

__all__ = ["LoRADense"]
