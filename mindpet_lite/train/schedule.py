"""Learning-rate schedule and optimizer: the lr is a table, one entry per optimizer update.

The optimizer reads the lr at its own ``global_step``, so the position in the schedule is saved and
resumed with the optimizer state.

Learning-rate schedule (``t`` = 1-based optimizer update, ``T`` = schedule length, ``W`` = warmup)::

    t <= W:                warmup_lr_init + (lr - warmup_lr_init) * t / W
    t >  W, constant:      lr
    t >  W, cosine:        lr_end + (lr - lr_end) * (1 + cos(pi * (t - 1 - W) / (T - W))) / 2

``W = warmup_steps`` if given, else ``int(warmup_ratio * T)``; ``T = lr_schedule.total_steps`` if > 0,
else the whole run (epochs x optimizer steps per epoch). ``--max_steps`` stops the run early without
changing ``T``, so a run interrupted at step s and resumed follows the same lr curve as one that was not.

LoRA+ (``pet_config.loraplus_lr_ratio``): the B factors (and 1-D trainables) take ratio x this table in an
optimizer group of their own.
"""
import math

import numpy as np
from mindspore import Tensor, nn
from mindspore import dtype as mstype

from mindpet_lite import _checks
from mindpet_lite.delta.lora import LORA_B

__all__ = ["warmup_steps_for", "lr_at", "lr_values", "build_optimizer", "loraplus_groups"]


def warmup_steps_for(schedule, total):
    """Warmup length W of a schedule of ``total`` updates."""
    if schedule.warmup_steps is not None:
        return min(int(schedule.warmup_steps), total)
    return int(schedule.warmup_ratio * total)


def lr_at(schedule, step, total):
    """The lr of optimizer update ``step`` (1-based) in a schedule of ``total`` updates (see module doc)."""
    warmup = warmup_steps_for(schedule, total)
    base = schedule.learning_rate
    if step <= warmup:
        return schedule.warmup_lr_init + (base - schedule.warmup_lr_init) * step / warmup
    if schedule.type == "constant":
        return base
    progress = min((step - 1 - warmup) / max(total - warmup, 1), 1.0)
    return schedule.lr_end + (base - schedule.lr_end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_values(schedule, total):
    """float32 array of the lr of updates 1..total (the optimizer reads entry global_step)."""
    _checks.check_positive_int("total steps of the lr schedule", total)
    return np.array([lr_at(schedule, t, total) for t in range(1, total + 1)], dtype=np.float32)


def loraplus_groups(params, lr_table, loraplus_lr_ratio):
    """LoRA+ parameter groups: ``[{'params': A and other 2-D, 'lr': table}, {'params': B and 1-D, 'lr':
    ratio x table}]`` (PEFT's create_loraplus_optimizer split: LoRA B factors and 1-D parameters, e.g. DoRA
    magnitudes and norms, take the ratio); an empty group is left out."""
    _checks.check_number("loraplus_lr_ratio", loraplus_lr_ratio, above=0)
    fast = [p for p in params if LORA_B in p.name or len(p.shape) == 1]  # B of any adapter name
    slow = [p for p in params if not (LORA_B in p.name or len(p.shape) == 1)]
    table = np.asarray(lr_table, dtype=np.float32)
    groups = [{"params": slow, "lr": Tensor(table, mstype.float32)},
              {"params": fast, "lr": Tensor(table * np.float32(loraplus_lr_ratio), mstype.float32)}]
    return [g for g in groups if g["params"]]


def build_optimizer(params, optimizer_config, lr_table, loraplus_lr_ratio=None):
    """``nn.AdamWeightDecay`` over ``params`` (the trainable ones) with the lr table; with
    ``loraplus_lr_ratio`` (LoRA+) in the two groups of :func:`loraplus_groups`."""
    params = list(params)
    if not params:
        raise ValueError("no trainable parameters: get_pet_model leaves the LoRA factors trainable; "
                         "check pet_config.target_modules / freeze_include")
    if loraplus_lr_ratio is not None:
        params = loraplus_groups(params, lr_table, loraplus_lr_ratio)
    return nn.AdamWeightDecay(params, learning_rate=Tensor(lr_table, mstype.float32),
                              beta1=optimizer_config.beta1, beta2=optimizer_config.beta2,
                              eps=optimizer_config.eps, weight_decay=optimizer_config.weight_decay)
