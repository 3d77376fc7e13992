"""The training loop: the optimizer, the step cells, the callbacks, and the state a resume restores.

:class:`Trainer` builds the optimizer over the trainable parameters with the lr table
(:mod:`mindpet_lite.train.schedule`) and the step cells (:mod:`mindpet_lite.train.step`), then
:meth:`Trainer.fit` feeds micro-batches to them and calls the callbacks with a :class:`TrainState`.

Resume: :meth:`Trainer.state_dict` is what a resumed run needs besides the adapter: the optimizer
moments, the global step (hence the lr), the loss scale and the loop position
(:func:`mindpet_lite.train.job.finetune` reads it back and skips the micro-batches already consumed).
"""
import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore import dtype as mstype
from mindspore.communication import GlobalComm

from mindpet_lite import _checks
from mindpet_lite.train.schedule import build_optimizer, lr_values
from mindpet_lite.train.step import TrainStep

logger = logging.getLogger(__name__)

__all__ = ["TrainState", "Trainer", "label_tokens"]

_STATE_PREFIXES = ("adam_m.", "adam_v.")
_OPT_STATE_NAMES = ("global_step",)


@dataclasses.dataclass
class TrainState:
    """What callbacks see."""
    net: Any = None
    trainer: Any = None
    pet_config: Any = None
    step: int = 0
    total_steps: int = 0
    stop_step: int = 0
    loss: float = float("nan")
    lr: float = 0.0
    history: list = dataclasses.field(default_factory=list)
    evals: list = dataclasses.field(default_factory=list)
    rank_id: int = 0
    rank_size: int = 1
    global_batch: int = 1
    seq_length: int = 0
    tokens_per_step: int = 0
    elapsed_before: float = 0.0
    start_time: float = 0.0

    @property
    def elapsed(self):
        """Training seconds, including those before a resume."""
        return self.elapsed_before + (time.perf_counter() - self.start_time if self.start_time else 0.0)


def label_tokens(labels, ignore_index=-100):
    """The label tokens of a batch that the loss counts: ``labels[:, 1:] != ignore_index`` (a causal LM
    predicts ``labels[:, 1:]`` from ``input_ids[:, :-1]``, as :class:`~mindpet_lite.models.llama.
    LlamaForCausalLM` does). ``labels``: an int array or Tensor ``[B, S + 1]``."""
    values = labels.asnumpy() if hasattr(labels, "asnumpy") else np.asarray(labels)
    return int(np.count_nonzero(values[:, 1:] != ignore_index))


class Trainer:
    """Optimizer, step cells and the loop for a LoRA network (only its trainable parameters train).

    Args:
        net: the network (``net(input_ids, labels)`` -> loss), after get_pet_model.
        optimizer_config, lr_schedule, wrapper: sections of the RunConfig.
        total_steps: the lr schedule length T (optimizer updates).
        accumulate: gradient_accumulation_steps.
        rank_size: data-parallel workers (> 1: gradients are all-reduced).
        ignore_index: the label that marks positions without a loss; the loss of a step is the mean
            over the label tokens of its whole global batch (see :func:`label_tokens`).
    """

    def __init__(self, net, optimizer_config, lr_schedule, wrapper, total_steps, accumulate=1, rank_size=1,
                 ignore_index=-100):
        self.net = net
        self.ignore_index = _checks.check_int("ignore_index", ignore_index)
        self.total_steps = _checks.check_positive_int("total_steps", total_steps)
        self.accumulate = _checks.check_positive_int("gradient_accumulation_steps", accumulate)
        self.rank_size = rank_size
        self.schedule = lr_schedule
        self.lr_table = lr_values(lr_schedule, total_steps)
        params = net.trainable_params()
        ratio = getattr(getattr(net, "pet_config", None), "loraplus_lr_ratio", None)  # LoRA+
        self.optimizer = build_optimizer(params, optimizer_config, self.lr_table, ratio)
        self.scale_sense = Parameter(Tensor(wrapper.scale_sense, mstype.float32), name="scale_sense",
                                     requires_grad=False)
        scale_cell = None
        if wrapper.dynamic_loss_scale:
            scale_cell = nn.DynamicLossScaleUpdateCell(wrapper.scale_sense, wrapper.scale_factor,
                                                       wrapper.scale_window)
        check = wrapper.dynamic_loss_scale or wrapper.scale_sense != 1.0
        clip = wrapper.max_grad_norm if wrapper.use_clip_grad else None
        reducer = None
        if rank_size > 1:
            # each worker's gradients are already weighted by its share of the global label tokens
            reducer = nn.DistributedGradReducer(self.optimizer.parameters, mean=False, degree=rank_size,
                                                group=GlobalComm.WORLD_COMM_GROUP)
        accu = None
        if self.accumulate > 1:
            accu = self.optimizer.parameters.clone(prefix="accu_grads", init="zeros")
        common = dict(accumulators=accu, accumulate=self.accumulate, scale_sense=self.scale_sense,
                      loss_scale_cell=scale_cell, check_overflow=check, clip_norm=clip, reducer=reducer,
                      rank_size=rank_size)
        self.step_cell = TrainStep(net, self.optimizer, apply=True, **common)
        self.accu_cell = TrainStep(net, self.optimizer, apply=False, **common) if self.accumulate > 1 else None
        self.step = 0
        self.history = []
        self.elapsed_before = 0.0

    # ---- state for resume --------------------------------------------------------------------------
    def state_dict(self):
        """(tensors, metadata): optimizer moments + global step + loss scale, and the loop position."""
        tensors = {}
        for name, param in self.optimizer.parameters_and_names():
            if name.startswith(_STATE_PREFIXES) or name in _OPT_STATE_NAMES:
                tensors[name] = param.asnumpy()
        tensors["scale_sense"] = self.scale_sense.asnumpy()
        meta = {"step": self.step, "micro_batches": self.step * self.accumulate,
                "gradient_accumulation_steps": self.accumulate, "total_steps": self.total_steps,
                "lr_schedule": dataclasses.asdict(self.schedule), "rank_size": self.rank_size,
                "elapsed_s": self.elapsed_before, "history": self.history}
        return tensors, meta

    def load_state_dict(self, tensors, meta):
        """Restore what :meth:`state_dict` gave (the adapter weights are loaded separately)."""
        params = dict(self.optimizer.parameters_and_names())
        wanted = [n for n in params if n.startswith(_STATE_PREFIXES) or n in _OPT_STATE_NAMES]
        missing = [n for n in wanted if n not in tensors]
        if missing:
            raise ValueError(f"resume state lacks optimizer entries {missing[:5]} (another adapter layout?)")
        for name in wanted:
            value = np.asarray(tensors[name])
            if tuple(value.shape) != tuple(params[name].shape):
                raise ValueError(f"resume state: {name} has shape {list(value.shape)}, the optimizer "
                                 f"expects {list(params[name].shape)}")
            params[name].set_data(Tensor(value).astype(params[name].dtype))
        if "scale_sense" in tensors:
            self.scale_sense.set_data(Tensor(np.asarray(tensors["scale_sense"]), mstype.float32))
        self.step = int(meta["step"])
        self.history = list(meta.get("history", []))
        self.elapsed_before = float(meta.get("elapsed_s", 0.0))

    # ---- loop ------------------------------------------------------------------------------------------
    def _one_step(self, batches):
        """One optimizer step over its micro-batches ``[(input_ids, labels), ...]``; returns the loss of
        the global batch (mean over all its label tokens, every worker's). The step's label tokens are
        counted here before the first micro-batch runs: each micro-batch's gradients are weighted by
        its share of them (the graph all-reduces the count over the workers)."""
        counts = [label_tokens(labels, self.ignore_index) for _, labels in batches]
        step_tokens = _token_tensor(sum(counts))
        shares = []
        for (input_ids, labels), count in zip(batches[:-1], counts[:-1]):
            shares.append(self.accu_cell(input_ids, labels, _token_tensor(count), step_tokens))
        input_ids, labels = batches[-1]
        shares.append(self.step_cell(input_ids, labels, _token_tensor(counts[-1]), step_tokens))
        return float(sum(float(x.asnumpy()) for x in shares))

    def fit(self, dataset, state, callbacks=(), stop_step=None):
        """Train on ``dataset`` (batches ``(input_ids, labels)``; the micro-batches already consumed by
        ``self.step`` must have been skipped) until ``stop_step`` or the data ends."""
        stop = min(stop_step or self.total_steps, self.total_steps)
        state.trainer, state.step, state.total_steps, state.stop_step = self, self.step, self.total_steps, stop
        state.history, state.elapsed_before = self.history, self.elapsed_before
        state.start_time = time.perf_counter()
        self.net.set_train(True)
        _call(callbacks, "on_train_begin", state)
        pending = []  # the micro-batches of the next optimizer step
        if self.step < stop:
            for batch in dataset.create_tuple_iterator(num_epochs=1, do_copy=False):
                pending.append(batch)
                if len(pending) < self.accumulate:
                    continue
                state.loss = self._one_step(pending)
                pending = []
                self.step += 1
                state.step = self.step
                state.lr = float(self.lr_table[min(self.step, self.total_steps) - 1])
                if not math.isfinite(state.loss):
                    raise FloatingPointError(f"loss is {state.loss} at step {self.step}: lower the learning rate "
                                             "or enable runner_wrapper.use_clip_grad")
                self.history.append({"step": self.step, "loss": state.loss, "lr": state.lr,
                                     "elapsed_s": round(state.elapsed, 3)})
                self.elapsed_before = state.elapsed
                _call(callbacks, "on_step_end", state)
                if self.step >= stop:
                    break
        if self.step < stop:
            logger.warning("the data ran out at step %d, before max_steps / total steps %d", self.step, stop)
            state.stop_step = self.step
        self.elapsed_before = state.elapsed
        _call(callbacks, "on_train_end", state)
        return state


def _token_tensor(count):
    return Tensor(float(count), mstype.float32)


def _call(callbacks, hook, state):
    for callback in callbacks:
        fn = getattr(callback, hook, None)
        if fn is not None:
            fn(state)
