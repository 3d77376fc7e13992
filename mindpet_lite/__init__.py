"""mindpet_lite: a small, checked delta-tuning toolkit for MindSpore (LoRA and MindPet's other methods),
a drop-in for MindPet."""
from mindpet_lite._version import __version__
from mindpet_lite.delta import (AdapterDense, LoRADense, LowRankAdapterDense, PrefixEncoder, PrefixLayer, RDropLoss,
                                rdrop_repeat)
from mindpet_lite.graph.checkpoint import TrainableParamsCheckPoint
from mindpet_lite.graph.adapters import delete_adapter, disable_adapter, list_adapters, set_adapter
from mindpet_lite.graph.freeze import (
    freeze_delta,
    freeze_from_config,
    freeze_modules,
    get_adapter_params,
    trainable_params_report,
)
from mindpet_lite.adapters.io import load_adapter, save_adapter
from mindpet_lite.adapters.merge import merge_adapter
from mindpet_lite.pet.model import get_pet_model

__all__ = [
    "__version__",
    "LoRADense",
    "AdapterDense",
    "LowRankAdapterDense",
    "PrefixLayer",
    "PrefixEncoder",
    "RDropLoss",
    "rdrop_repeat",
    "TrainableParamsCheckPoint",
    "get_pet_model",
    "freeze_modules",
    "freeze_delta",
    "freeze_from_config",
    "get_adapter_params",
    "trainable_params_report",
    "save_adapter",
    "load_adapter",
    "merge_adapter",
    "set_adapter",
    "disable_adapter",
    "delete_adapter",
    "list_adapters",
]
