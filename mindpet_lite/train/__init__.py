"""mindpet_lite.train: MindFormers run YAML -> LoRA fine-tuning (step cell, lr, callbacks, resume)."""
from mindpet_lite.train.run_config import RunConfig, add_run_arguments, load_run_config
from mindpet_lite.train.trainer import Trainer, evaluate, finetune, load_base_checkpoint, lr_values

__all__ = ["RunConfig", "add_run_arguments", "load_run_config", "finetune", "Trainer", "evaluate",
           "load_base_checkpoint", "lr_values"]
