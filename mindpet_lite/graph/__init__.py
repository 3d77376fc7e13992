"""Freezing and parameter helpers, with MindPet's include / exclude semantics (BitFit: freeze_delta(net, 'bitfit'));
a network's named adapters; TrainableParamsCheckPoint."""
from mindpet_lite.graph.adapters import (
    adapter_params,
    adapter_rows,
    delete_adapter,
    disable_adapter,
    list_adapters,
    running_adapter,
    set_adapter,
    unmixable_cells,
)
from mindpet_lite.graph.checkpoint import TrainableParamsCheckPoint
from mindpet_lite.graph.freeze import (
    freeze_delta,
    freeze_from_config,
    freeze_modules,
    get_adapter_params,
    lora_cells,
    set_trainable_params,
    trainable_params_report,
)

__all__ = ["freeze_modules", "freeze_delta", "freeze_from_config", "get_adapter_params", "lora_cells",
           "set_trainable_params", "trainable_params_report", "list_adapters", "set_adapter", "disable_adapter",
           "delete_adapter", "adapter_params", "adapter_rows", "running_adapter", "unmixable_cells",
           "TrainableParamsCheckPoint"]
