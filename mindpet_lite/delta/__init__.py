"""Delta (parameter-efficient) cells."""
from mindpet_lite.delta.lora import LoRADense, lora_scaling
from mindpet_lite.delta.lora_adapters import BASE_ROW, DEFAULT_ADAPTER
from mindpet_lite.delta.ptuning2 import PrefixEncoder, PrefixTuningEncoder

__all__ = ["LoRADense", "lora_scaling", "DEFAULT_ADAPTER", "BASE_ROW", "PrefixEncoder", "PrefixTuningEncoder"]
