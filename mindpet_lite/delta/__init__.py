"""Delta (parameter-efficient) cells, with MindPet's names (``mindpet_lite.delta.adapter`` ... as
``mindpet.delta.adapter`` ...)."""
from mindpet_lite.delta.adapter import AdapterDense, AdapterLayer
from mindpet_lite.delta.lora import LoRADense, lora_scaling
from mindpet_lite.delta.lora_adapters import BASE_ROW, DEFAULT_ADAPTER
from mindpet_lite.delta.low_rank_adapter import LowRankAdapterDense, LowRankAdapterLayer
from mindpet_lite.delta.prefix_layer import PrefixLayer
from mindpet_lite.delta.r_drop import RDropLoss, rdrop_repeat

from mindpet_lite.delta.ptuning2 import PrefixEncoder, PrefixTuningEncoder

__all__ = ["LoRADense", "lora_scaling", "DEFAULT_ADAPTER", "BASE_ROW", "AdapterDense", "AdapterLayer",
           "LowRankAdapterDense", "LowRankAdapterLayer", "PrefixLayer", "RDropLoss", "rdrop_repeat", "PrefixEncoder",
           "PrefixTuningEncoder"]
