"""Adapter files: save / load / read, merge into base weights, HF PEFT exchange, HF Llama conversion."""
from mindpet_lite.adapters.convert import hf_to_mindspore, mindspore_to_hf
from mindpet_lite.adapters.mcore import FusedLayout, layout_from_config
from mindpet_lite.adapters.io import load_adapter, read_adapter, save_adapter
from mindpet_lite.adapters.sharded import gather_sharded_adapter
from mindpet_lite.adapters.metadata import adapter_scaling, base_fingerprint, lora_config, pet_config_from_metadata
from mindpet_lite.adapters.merge import (
    merge_adapter,
    merge_checkpoint,
    full_base_from_ranks,
    merge_full_checkpoint,
    merge_weights,
    unmerge_checkpoint,
)
from mindpet_lite.adapters.mutated_init import convert_weight_init
from mindpet_lite.adapters.peft import export_peft, import_peft

__all__ = [
    "save_adapter",
    "load_adapter",
    "read_adapter",
    "gather_sharded_adapter",
    "base_fingerprint",
    "pet_config_from_metadata",
    "lora_config",
    "adapter_scaling",
    "merge_adapter",
    "merge_weights",
    "merge_checkpoint",
    "unmerge_checkpoint",
    "merge_full_checkpoint",
    "full_base_from_ranks",
    "FusedLayout",
    "layout_from_config",
    "export_peft",
    "import_peft",
    "hf_to_mindspore",
    "mindspore_to_hf",
    "convert_weight_init",
]
