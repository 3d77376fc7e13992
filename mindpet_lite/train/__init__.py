"""mindpet_lite.train: MindFormers run YAML -> LoRA fine-tuning.

One concern a module: run_config (the YAML and flags), schedule (lr table, optimizer), step (the train
step cell), loop (Trainer, resume state), evaluation (held-out metrics), callbacks (progress, loss
curve, checkpoints), parallel (msrun data parallel), job (:func:`finetune`, the whole run).
"""
from mindpet_lite.train.run_config import RunConfig, add_run_arguments, load_run_config
from mindpet_lite.train.schedule import build_optimizer, loraplus_groups, lr_at, lr_values, warmup_steps_for
from mindpet_lite.train.step import TrainStep
from mindpet_lite.train.loop import Trainer, TrainState
from mindpet_lite.train.evaluation import evaluate
from mindpet_lite.train.job import build_model, finetune, load_base_checkpoint

__all__ = ["RunConfig", "add_run_arguments", "load_run_config", "finetune", "Trainer", "TrainState", "TrainStep",
           "evaluate", "load_base_checkpoint", "build_model", "lr_values", "lr_at", "warmup_steps_for",
           "build_optimizer", "loraplus_groups"]
