"""LoRA fine-tuning: lr schedule, optimizer, the train step cell, the loop, and the whole job.

The main job is one straight line (:func:`finetune`)::

    RunConfig -> context / data parallel -> datasets (checked) -> LlamaForCausalLM -> base checkpoint
      -> get_pet_model(net, run_config.pet_config) -> Trainer.fit (callbacks) -> held-out eval -> adapter

Train step (:class:`TrainStep`, GRAPH_MODE): loss and gradients of the trainable parameters only, then
(with ``gradient_accumulation_steps = k > 1``) the sum of k micro-batch gradients kept in
``accu_grads.*`` parameters, the data-parallel all-reduce (``nn.DistributedGradReducer``, mean over
the workers), division by the loss scale and by k, an overflow check (with loss scaling), global-norm
clipping (``runner_wrapper.use_clip_grad``) and the AdamWeightDecay update. The lr comes from a table
indexed by the optimizer's ``global_step`` (:func:`lr_values`), so it is saved and resumed with the
optimizer state.

Learning-rate schedule (``t`` = 1-based optimizer update, ``T`` = schedule length, ``W`` = warmup)::

    t <= W:                warmup_lr_init + (lr - warmup_lr_init) * t / W
    t >  W, constant:      lr
    t >  W, cosine:        lr_end + (lr - lr_end) * (1 + cos(pi * (t - 1 - W) / (T - W))) / 2

``W = warmup_steps`` if given, else ``int(warmup_ratio * T)``; ``T = lr_schedule.total_steps`` if > 0,
else the whole run (epochs x optimizer steps per epoch). ``--max_steps`` stops the run early without
changing ``T``, so a run interrupted at step s and resumed follows the same lr curve as one that was not.

Reproducibility: the data order is fixed by ``seed`` (:func:`mindpet_lite.data.create_dataset`), the
LoRA init by ``mindspore.set_seed(seed)``. A resumed run skips the micro-batches already consumed and
restores the adapter, the optimizer moments, the global step (hence the lr) and the loss scale, so it
ends with the adapter of an uninterrupted run. LoRA dropout masks are drawn from MindSpore's global
random stream, which is not saved: with ``lora_dropout > 0`` a resumed run is statistically, not
bitwise, the same.
"""
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from typing import Any

import numpy as np
import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore import dtype as mstype

from mindpet_lite import _checks
from mindpet_lite.train import callbacks as cb

logger = logging.getLogger(__name__)

__all__ = ["lr_at", "lr_values", "warmup_steps_for", "build_optimizer", "TrainStep", "Trainer", "TrainState",
           "evaluate", "load_base_checkpoint", "build_model", "finetune"]

_STATE_PREFIXES = ("adam_m.", "adam_v.")
_OPT_STATE_NAMES = ("global_step",)


# ------------------------------------------------------------------------------------------------
# learning rate
# ------------------------------------------------------------------------------------------------
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


def build_optimizer(params, optimizer_config, lr_table):
    """``nn.AdamWeightDecay`` over ``params`` (the trainable ones) with the lr table."""
    params = list(params)
    if not params:
        raise ValueError("no trainable parameters: get_pet_model leaves the LoRA factors trainable; "
                         "check pet_config.target_modules / freeze_include")
    return nn.AdamWeightDecay(params, learning_rate=Tensor(lr_table, mstype.float32),
                              beta1=optimizer_config.beta1, beta2=optimizer_config.beta2,
                              eps=optimizer_config.eps, weight_decay=optimizer_config.weight_decay)


# ------------------------------------------------------------------------------------------------
# the train step cell
# ------------------------------------------------------------------------------------------------
_scale_grad = ops.MultitypeFuncGraph("mindpet_lite_scale_grad")
_square_sum = ops.MultitypeFuncGraph("mindpet_lite_square_sum")
_accu_add = ops.MultitypeFuncGraph("mindpet_lite_accu_add")
_accu_sum = ops.MultitypeFuncGraph("mindpet_lite_accu_sum")
_accu_zero = ops.MultitypeFuncGraph("mindpet_lite_accu_zero")
_finite = ops.MultitypeFuncGraph("mindpet_lite_finite")


@_scale_grad.register("Tensor", "Tensor")
def _scale_grad_fn(scale, grad):
    # scale is 0-d: MindSpore's CPU Mul takes its scalar path (a [1]-shaped factor would broadcast and
    # keep two int64 index arrays of the gradient's size for the life of the graph)
    return grad * ops.cast(scale, grad.dtype)


@_square_sum.register("Tensor")
def _square_sum_fn(grad):
    flat = ops.reshape(ops.cast(grad, mstype.float32), (-1,))
    return ops.reduce_sum(flat * flat)


@_accu_add.register("Tensor", "Tensor")
def _accu_add_fn(accu, grad):
    return ops.assign_add(accu, ops.cast(grad, accu.dtype))


@_accu_sum.register("Tensor", "Tensor")
def _accu_sum_fn(accu, grad):
    return accu + ops.cast(grad, accu.dtype)


@_accu_zero.register("Tensor")
def _accu_zero_fn(accu):
    return ops.assign(accu, ops.zeros_like(accu))


@_finite.register("Tensor")
def _finite_fn(grad):
    return ops.all(ops.isfinite(grad))


class TrainStep(nn.Cell):
    """One training step (``apply=True``) or one accumulation micro-step (``apply=False``).

    The gradients pass through memory once after the backward: the loss-scale / accumulation division
    and the global-norm clip factor are folded into one multiply, and the norm is taken from the
    unscaled gradients (``||c*g|| = c*||g||``). With loss scale 1, no accumulation and no clipping
    the gradients go to the optimizer untouched. (``ops.clip_by_global_norm`` after a separate scaling
    pass cost the full fine-tune step 1.2x and 1.4 GB of peak memory on the benchmarks' larger model.)

    Args:
        network: a cell whose ``network(input_ids, labels)`` returns the scalar float32 loss.
        optimizer: the optimizer over the trainable parameters.
        accumulators: ParameterTuple like ``optimizer.parameters`` (needed when ``accumulate > 1``).
        accumulate: k micro-batches per update; the applied gradient is their mean.
        apply: False: add this micro-batch's gradients to the accumulators and return the loss.
        scale_sense: Parameter holding the loss scale (1.0: no scaling).
        loss_scale_cell: ``nn.DynamicLossScaleUpdateCell`` for dynamic scaling, or None.
        check_overflow: skip the update when a gradient is not finite (with loss scaling).
        clip_norm: global-norm clipping threshold, or None.
        reducer: ``nn.DistributedGradReducer`` under data parallel, or None.
        rank_size: workers (the returned loss is their mean).

    Inputs: ``input_ids``, ``labels`` (int32 ``[B, seq_length + 1]``). Output: the float32 loss.
    """

    def __init__(self, network, optimizer, accumulators=None, accumulate=1, apply=True, scale_sense=None,
                 loss_scale_cell=None, check_overflow=False, clip_norm=None, reducer=None, rank_size=1):
        super().__init__(auto_prefix=False)
        self.network = network
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()
        self.accumulate = int(accumulate)
        self.apply = bool(apply)
        if self.accumulate > 1 and accumulators is None:
            raise ValueError("accumulate > 1 needs accumulators")
        self.accu = accumulators
        self.scale_sense = scale_sense if scale_sense is not None else \
            Parameter(Tensor(1.0, mstype.float32), name="scale_sense", requires_grad=False)
        self.loss_scale_cell = loss_scale_cell
        self.dynamic = loss_scale_cell is not None
        self.check_overflow = bool(check_overflow) or self.dynamic
        self.clip = clip_norm is not None
        if self.clip and not float(clip_norm) > 0:
            raise ValueError(f"clip_norm must be a number > 0, got {clip_norm!r}")
        self.clip_norm = float(clip_norm) if clip_norm is not None else 1.0
        # a static loss scale is fixed at build time (resume restores the same value), so whether the
        # gradients need dividing at all is a graph constant
        self.unscale = self.dynamic or self.accumulate > 1 or float(self.scale_sense.asnumpy()) != 1.0
        self.reducer = reducer
        self.reduce = reducer is not None
        self.rank_size = int(rank_size)
        self.reduce_loss = self.rank_size > 1
        if self.reduce_loss:
            self.allreduce = ops.AllReduce()

    def _grad_factor(self, grads):
        """0-d float32 factor that unscales and clips the (summed, scaled) gradients in one multiply."""
        inv = 1.0 / (ops.cast(self.scale_sense, mstype.float32) * self.accumulate)
        if not self.clip:
            return inv
        norm = ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads))) * inv
        return inv * (self.clip_norm / ops.maximum(norm, self.clip_norm))

    def construct(self, input_ids, labels):
        loss = self.network(input_ids, labels)
        sens = ops.cast(self.scale_sense, mstype.float32) * ops.ones_like(loss)
        grads = self.grad(self.network, self.weights)(input_ids, labels, sens)
        if self.reduce_loss:
            loss = self.allreduce(loss) / self.rank_size
        if not self.apply:
            return ops.depend(loss, self.hyper_map(_accu_add, self.accu, grads))
        if self.accumulate > 1:
            grads = self.hyper_map(_accu_sum, self.accu, grads)
        if self.reduce:
            grads = self.reducer(grads)
        if self.unscale or self.clip:
            grads = self.hyper_map(ops.partial(_scale_grad, self._grad_factor(grads)), grads)
        if self.check_overflow:
            finite = ops.stack(self.hyper_map(_finite, grads)).all()
            overflow = ops.logical_not(finite)
            if self.dynamic:
                overflow = self.loss_scale_cell(self.scale_sense, overflow)
            if not overflow:
                loss = ops.depend(loss, self.optimizer(grads))
        else:
            loss = ops.depend(loss, self.optimizer(grads))
        if self.accumulate > 1:
            loss = ops.depend(loss, self.hyper_map(_accu_zero, self.accu))
        return loss


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------
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


class Trainer:
    """Optimizer, step cells and the loop for a LoRA network (only its trainable parameters train).

    Args:
        net: the network (``net(input_ids, labels)`` -> loss), after get_pet_model.
        optimizer_config, lr_schedule, wrapper: sections of the RunConfig.
        total_steps: the lr schedule length T (optimizer updates).
        accumulate: gradient_accumulation_steps.
        rank_size: data-parallel workers (> 1: gradients are all-reduced, mean).
    """

    def __init__(self, net, optimizer_config, lr_schedule, wrapper, total_steps, accumulate=1, rank_size=1):
        self.net = net
        self.total_steps = _checks.check_positive_int("total_steps", total_steps)
        self.accumulate = _checks.check_positive_int("gradient_accumulation_steps", accumulate)
        self.rank_size = rank_size
        self.schedule = lr_schedule
        self.lr_table = lr_values(lr_schedule, total_steps)
        params = net.trainable_params()
        self.optimizer = build_optimizer(params, optimizer_config, self.lr_table)
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
            from mindspore.communication import GlobalComm  # pylint: disable=import-outside-toplevel
            reducer = nn.DistributedGradReducer(self.optimizer.parameters, mean=True, degree=rank_size,
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
    def fit(self, dataset, state, callbacks=(), stop_step=None):
        """Train on ``dataset`` (batches ``(input_ids, labels)``; the micro-batches already consumed by
        ``self.step`` must have been skipped) until ``stop_step`` or the data ends."""
        stop = min(stop_step or self.total_steps, self.total_steps)
        state.trainer, state.step, state.total_steps, state.stop_step = self, self.step, self.total_steps, stop
        state.history, state.elapsed_before = self.history, self.elapsed_before
        state.start_time = time.perf_counter()
        self.net.set_train(True)
        _call(callbacks, "on_train_begin", state)
        micro, micro_losses = 0, []
        if self.step < stop:
            for input_ids, labels in dataset.create_tuple_iterator(num_epochs=1, do_copy=False):
                micro += 1
                if micro % self.accumulate:
                    micro_losses.append(self.accu_cell(input_ids, labels))
                    continue
                loss = self.step_cell(input_ids, labels)
                losses = [float(x.asnumpy()) for x in micro_losses] + [float(loss.asnumpy())]
                micro_losses = []
                self.step += 1
                state.step = self.step
                state.loss = float(np.mean(losses))
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


def _call(callbacks, hook, state):
    for callback in callbacks:
        fn = getattr(callback, hook, None)
        if fn is not None:
            fn(state)


# ------------------------------------------------------------------------------------------------
# held-out evaluation
# ------------------------------------------------------------------------------------------------
class _EvalCell(nn.Cell):
    """Summed NLL, label count, argmax hits, and rows whose every label token is the argmax."""

    def __init__(self, network, ignore_index=-100):
        super().__init__(auto_prefix=False)
        self.network = network
        self.ignore_index = ignore_index

    def construct(self, input_ids, labels):
        logits = ops.cast(self.network(input_ids[:, :-1]), mstype.float32)
        target = labels[:, 1:]
        keep = ops.not_equal(target, self.ignore_index)
        safe = ops.select(keep, target, ops.zeros_like(target))
        logp = ops.log_softmax(logits, -1)
        nll = -ops.squeeze(ops.gather_elements(logp, -1, ops.expand_dims(safe, -1)), -1)
        keep_f = ops.cast(keep, mstype.float32)
        hit = ops.logical_and(ops.equal(ops.cast(ops.argmax(logits, -1), target.dtype), safe), keep)
        row_ok = ops.logical_and(ops.all(ops.logical_or(hit, ops.logical_not(keep)), -1), ops.any(keep, -1))
        return (ops.sum(nll * keep_f), ops.sum(keep_f), ops.sum(ops.cast(hit, mstype.float32)),
                ops.sum(ops.cast(row_ok, mstype.float32)))


def evaluate(net, dataset, ignore_index=-100):
    """Held-out metrics of a causal LM over a dataset of ``(input_ids, labels)`` batches.

    Returns {'loss': mean NLL per label token, 'token_accuracy': share of label tokens that are the
    argmax, 'exact_match': share of rows whose every label token is the argmax (under teacher forcing
    this equals greedy decoding reproducing the whole answer), 'tokens', 'rows'}.
    """
    cell = _EvalCell(net, ignore_index)
    was_training = net.training
    net.set_train(False)
    nll = tokens = hits = rows_ok = rows = 0.0
    for input_ids, labels in dataset.create_tuple_iterator(num_epochs=1, do_copy=False):
        a, b, c, d = cell(input_ids, labels)
        nll += float(a.asnumpy())
        tokens += float(b.asnumpy())
        hits += float(c.asnumpy())
        rows_ok += float(d.asnumpy())
        rows += input_ids.shape[0]
    net.set_train(was_training)
    if not tokens:
        raise ValueError("the evaluation data has no label tokens (every label is the ignore index)")
    return {"loss": nll / tokens, "token_accuracy": hits / tokens, "exact_match": rows_ok / rows,
            "tokens": int(tokens), "rows": int(rows)}


# ------------------------------------------------------------------------------------------------
# model and base weights
# ------------------------------------------------------------------------------------------------
def build_model(run_config):
    """The network the RunConfig names: the built-in Llama, or a MindFormers model (Ascend)."""
    if run_config.backend == "mindformers":
        from mindpet_lite.integrations import mindformers as mf  # pylint: disable=import-outside-toplevel
        build = getattr(mf, "build_model", None)
        if build is None:
            raise NotImplementedError("building a MindFormers model needs "
                                      "mindpet_lite.integrations.mindformers.build_model, which this "
                                      "version does not have; use the built-in Llama (device_target CPU)")
        body = {k: v for k, v in run_config.model_config.items() if k != "pet_config"}
        return build(body, run_config.arch_type)
    from mindpet_lite.models.llama import LlamaForCausalLM  # pylint: disable=import-outside-toplevel
    return LlamaForCausalLM(run_config.llama_config)


def _recompute(net, backend):
    """recompute_config.recompute on the built-in Llama (a MindFormers model reads it from its own config)."""
    if backend == "mindformers":
        logger.warning("recompute_config.recompute is applied to the built-in Llama only; a MindFormers "
                       "model takes it from model_config.recompute_config / parallel_config")
        return
    from mindpet_lite.models.llama import recompute_layers  # pylint: disable=import-outside-toplevel
    logger.info("recompute: %d decoder layers recompute their activations in the backward",
                recompute_layers(net))


_CKPT_SUFFIXES = (".ckpt", ".safetensors")
_IGNORED_CKPT_PREFIXES = ("adam_m.", "adam_v.", "moment1.", "moment2.", "accu_grads.", "global_step",
                          "learning_rate", "scale_sense", "loss_scale", "epoch_num", "step_num",
                          "current_iterator_step", "last_overflow_iterator_step")


def _checkpoint_files(path, rank_id):
    """The checkpoint file(s) that make up the base weights at ``path`` (a file or a directory)."""
    if os.path.isfile(path):
        if not path.endswith(_CKPT_SUFFIXES):
            raise ValueError(f"load_checkpoint must be a .ckpt or .safetensors file (or a directory of them), "
                             f"got {path}")
        return [path], False
    if not os.path.isdir(path):
        raise FileNotFoundError(f"load_checkpoint: no such file or directory: {path}")
    ranks = sorted(d for d in os.listdir(path) if d.startswith("rank_") and os.path.isdir(os.path.join(path, d)))
    sharded = bool(ranks)
    if ranks:
        folder = os.path.join(path, f"rank_{rank_id}")
        if not os.path.isdir(folder):
            folder = os.path.join(path, ranks[0])
    else:
        folder = path
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(_CKPT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"load_checkpoint: no .ckpt or .safetensors file in {folder}")
    if sharded and len(files) > 1:
        files = [max(files, key=os.path.getmtime)]  # MindFormers keeps several steps per rank: the newest
    return files, sharded


def _read_weights(files):
    weights = {}
    for file in files:
        fmt = "safetensors" if file.endswith(".safetensors") else "ckpt"
        try:
            loaded = ms.load_checkpoint(file, format=fmt)
        except (ValueError, RuntimeError, OSError, TypeError) as err:
            raise ValueError(f"load_checkpoint: {file} is not a readable {fmt} checkpoint: {err}") from err
        for name, value in loaded.items():
            if not isinstance(value, str):
                weights[name] = value
    return weights


def load_base_checkpoint(net, path, auto_trans_ckpt=False, rank_id=0):
    """Load base weights into ``net`` (before get_pet_model), checking that they fit.

    Every parameter of ``net`` must be in the checkpoint with its shape: a missing one would stay at its
    random initialisation and a different shape means a checkpoint of another model; both are
    ``ValueError`` before anything is assigned. Unexpected keys (LoRA factors, optimizer states, other
    heads) are logged and skipped. A directory of ``rank_*`` folders (MindFormers' distributed layout)
    is accepted when rank_0's file holds the whole model, which is the case for data-parallel
    checkpoints: this backend trains data parallel only and never reshards (``auto_trans_ckpt`` has
    nothing to do). Returns {'files', 'loaded', 'unexpected'}.
    """
    if not isinstance(path, str) or not path:
        raise ValueError("load_checkpoint is empty: LoRA fine-tuning needs the base model's weights "
                         "(--load_checkpoint PATH.ckpt|.safetensors); without them every layer stays random")
    files, sharded = _checkpoint_files(path, rank_id)
    weights = _read_weights(files)
    params = dict(net.parameters_and_names())
    skipped = [k for k in weights if k.startswith(_IGNORED_CKPT_PREFIXES) or "mindpet_delta_" in k]
    for key in skipped:
        weights.pop(key)
    missing = sorted(n for n in params if n not in weights)
    unexpected = sorted(k for k in weights if k not in params)
    shape_errors = [f"{n}: checkpoint {list(weights[n].shape)} vs model {list(params[n].shape)}"
                    for n in params if n in weights and tuple(weights[n].shape) != tuple(params[n].shape)]
    where = ", ".join(files)
    hint = ""
    if any("q_proj" in k or "self_attn" in k for k in unexpected):
        hint = " It looks like a Hugging Face checkpoint: convert it with `mindpet-lite convert-base` first."
    if sharded and shape_errors:
        raise ValueError(f"load_checkpoint {path}: rank_* checkpoint shards do not hold the whole model "
                         f"({shape_errors[0]}); this backend trains data parallel and cannot reshard a model-"
                         "parallel checkpoint (auto_trans_ckpt): merge the shards into one file first")
    if shape_errors:
        raise ValueError(f"load_checkpoint {where} is a checkpoint of another model: {len(shape_errors)} "
                         f"parameters differ in shape, e.g. " + "; ".join(shape_errors[:4]) +
                         ". Check model.model_config (hidden_size, num_layers, vocab_size, ...)." + hint)
    if missing:
        raise ValueError(f"load_checkpoint {where} does not fit the model: {len(missing)} of {len(params)} "
                         f"parameters are missing, e.g. {missing[:4]}; they would stay at random "
                         f"initialisation. Is it a checkpoint of another model?" + hint)
    if unexpected:
        logger.warning("load_checkpoint: %d unexpected keys ignored, e.g. %s", len(unexpected), unexpected[:4])
    if skipped:
        logger.info("load_checkpoint: %d optimizer / LoRA entries ignored (adapters load with --resume)",
                    len(skipped))
    if sharded:
        logger.info("load_checkpoint: %s holds the whole model (data-parallel checkpoint): nothing to reshard%s",
                    files[0], " (auto_trans_ckpt=True has nothing to do)" if auto_trans_ckpt else "")
    for name, param in params.items():
        value = weights[name]
        param.set_data(Tensor(value.asnumpy() if hasattr(value, "asnumpy") else value).astype(param.dtype))
    logger.info("load_checkpoint: %d parameters from %s", len(params), where)
    return {"files": files, "loaded": len(params), "unexpected": unexpected}


# ------------------------------------------------------------------------------------------------
# the whole job
# ------------------------------------------------------------------------------------------------
def _set_context(cfg):
    """Execution mode and device options (the device itself is set by parallel.init_parallel)."""
    ms.set_context(mode=ms.GRAPH_MODE if cfg.mode == 0 else ms.PYNATIVE_MODE)
    if cfg.max_call_depth:
        ms.set_recursion_limit(cfg.max_call_depth)
    if cfg.max_device_memory and cfg.device_target != "CPU":
        ms.runtime.set_memory(max_size=cfg.max_device_memory)


def _setup_parallel(cfg):
    """(rank_id, rank_size): (0, 1) alone; under msrun with use_parallel, init() + DATA_PARALLEL
    (gradients_mean) via mindpet_lite.train.parallel. Runs before any data is read: in msrun's
    scheduler process init() never returns."""
    from mindpet_lite.train.parallel import init_parallel  # pylint: disable=import-outside-toplevel
    return init_parallel(cfg.device_target, cfg.use_parallel, cfg.data_parallel if cfg.use_parallel else None)


def _open_data(cfg, dc, batch_size, rank_id, rank_size, repeat, train):
    from mindpet_lite.data import create_dataset  # pylint: disable=import-outside-toplevel
    if not dc.dataset_dir:
        which = "train_dataset" if train else "eval_dataset"
        raise ValueError(f"{which}.data_loader.dataset_dir is empty: give a MindRecord file "
                         f"(--{which}_dir PATH; build one with `mindpet-lite data`)")
    return create_dataset(dc.dataset_dir, batch_size, seq_length=cfg.seq_length, rank_id=rank_id,
                          rank_size=rank_size, shuffle=dc.shuffle, seed=cfg.seed,
                          drop_remainder=dc.drop_remainder if not train else True,
                          num_parallel_workers=dc.num_parallel_workers, repeat=repeat)


def _adapter_digest(net):
    from mindpet_lite.graph.freeze import get_adapter_params  # pylint: disable=import-outside-toplevel
    digest = hashlib.sha256()
    for name, param in sorted(get_adapter_params(net).items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(param.asnumpy(), dtype=np.float32).tobytes())
    return digest.hexdigest()


def _write_json(path, obj):
    from mindpet_lite._files import write_json  # pylint: disable=import-outside-toplevel
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, obj)


def finetune(run_config):
    """Run the LoRA fine-tuning job a RunConfig describes; returns its summary dict.

    Every input is checked before the first step: the datasets (path, columns, row length, rows per
    worker), the base checkpoint (missing / mis-shaped parameters), the pet_config (its targets), the
    resume checkpoint. Writes under ``output_dir``: ``checkpoint/`` (see callbacks), ``adapter.<fmt>``,
    ``loss.csv``, ``loss.png``, ``summary.json`` (rank 0) and ``ranks/rank_<r>.json`` (every rank).
    """
    from mindpet_lite.pet import get_pet_model  # pylint: disable=import-outside-toplevel
    from mindpet_lite.adapters import load_adapter, save_adapter  # pylint: disable=import-outside-toplevel
    from mindpet_lite._files import read_checkpoint  # pylint: disable=import-outside-toplevel

    cfg = run_config
    wall_start = time.perf_counter()
    cfg.log_ignored()
    if cfg.sink_mode:
        logger.info("runner_config.sink_mode=True: accepted; steps are fed from Python on this runner")
    _set_context(cfg)
    rank_id, rank_size = _setup_parallel(cfg)
    ms.set_seed(cfg.seed)
    np.random.seed(cfg.seed)

    # 1. data (checked first: the cheapest inputs to get wrong)
    train_data = _open_data(cfg, cfg.train_dataset, cfg.batch_size, rank_id, rank_size, cfg.epochs, train=True)
    eval_data = None
    if cfg.eval_dataset is not None and rank_id == 0:
        eval_data = _open_data(cfg, cfg.eval_dataset, cfg.eval_dataset.batch_size or cfg.batch_size, 0, 1, 1,
                               train=False)
    micro_batches = train_data.get_dataset_size()
    steps_in_data = micro_batches // cfg.gradient_accumulation_steps
    if steps_in_data < 1:
        raise ValueError(f"the training data gives {micro_batches} batches per worker, fewer than "
                         f"gradient_accumulation_steps={cfg.gradient_accumulation_steps}")
    total = cfg.lr_schedule.total_steps or steps_in_data
    stop = min(cfg.max_steps or steps_in_data, steps_in_data)
    if cfg.max_steps and cfg.max_steps > steps_in_data:
        logger.warning("max_steps=%d > %d steps in the data (epochs=%d): training %d steps",
                       cfg.max_steps, steps_in_data, cfg.epochs, stop)

    # 2. resume checkpoint (found and read before the model is built)
    resume = None
    if cfg.resume:
        source = cfg.output_dir if cfg.resume is True else cfg.resume
        json_path = cb.find_latest_checkpoint(source)
        resume = cb.read_resume_state(json_path)
        if resume[0].get("rank_size", 1) != rank_size:
            logger.warning("resume: the checkpoint was written with %s workers, now %d: the data order differs",
                           resume[0].get("rank_size"), rank_size)

    # 3. model, base weights, LoRA
    net = build_model(cfg)
    base = load_base_checkpoint(net, cfg.load_checkpoint, cfg.auto_trans_ckpt, rank_id)
    get_pet_model(net, cfg.pet_config)
    if cfg.recompute:
        _recompute(net, cfg.backend)
    share = net.pet_summary
    if rank_id == 0:
        cb.say(f"LoRA: {share['num_replaced']} layers, trainable {share['trainable']:,} / {share['total']:,} "
               f"parameters ({share['percent']:.3f}%)")

    trainer = Trainer(net, cfg.optimizer, cfg.lr_schedule, cfg.wrapper, total,
                      cfg.gradient_accumulation_steps, rank_size)
    if resume is not None:
        meta, adapter_path, state_path = resume
        load_adapter(net, adapter_path)
        tensors, _ = read_checkpoint(state_path)
        trainer.load_state_dict(tensors, meta)
        if meta.get("total_steps") != total:
            logger.warning("resume: the lr schedule length was %s, now %d: the lr curve changes",
                           meta.get("total_steps"), total)
        if rank_id == 0:
            cb.say(f"resumed from {adapter_path} at step {trainer.step}")
        consumed = trainer.step * cfg.gradient_accumulation_steps
        if consumed:
            train_data = train_data.skip(consumed)

    state = TrainState(net=net, pet_config=net.pet_config, rank_id=rank_id, rank_size=rank_size,
                       global_batch=cfg.batch_size * rank_size, seq_length=cfg.seq_length,
                       tokens_per_step=cfg.batch_size * rank_size * cfg.seq_length * cfg.gradient_accumulation_steps)
    ckpt_dir = cfg.checkpoint_dir or os.path.join(cfg.output_dir, "checkpoint")
    # with held-out data the PNG is drawn after the final score, with it (below)
    callbacks = [cb.ProgressLogger(cfg.log_every), cb.LossHistory(cfg.output_dir, plot=eval_data is None),
                 cb.AdapterCheckpoint(ckpt_dir, cfg.save_checkpoint_steps, cfg.keep_checkpoint_max,
                                      cfg.checkpoint_prefix, cfg.checkpoint_format)]

    def score(label):
        """Score the held-out data now: tagged with the step, kept in state.evals, printed."""
        metrics = dict(evaluate(net, eval_data, _ignore_index(cfg)), step=trainer.step)
        state.evals.append(metrics)
        cb.say(cb.eval_line(label, metrics))
        return metrics

    every = _eval_every(cfg, steps_in_data // cfg.epochs)
    if eval_data is not None and every:
        callbacks.append(cb.PeriodicEval(score, every))

    # 4. held-out score before, train, held-out score after
    if eval_data is not None:
        score("held-out before" if trainer.step == 0 else f"held-out at step {trainer.step}")
    os.makedirs(cfg.output_dir, exist_ok=True)
    trainer.fit(train_data, state, callbacks, stop_step=stop)
    after = None
    if eval_data is not None:
        after = score("held-out after ")
        if rank_id == 0:
            cb.plot_loss(callbacks[1].png_path, state.history, state.evals)

    # 5. final adapter and summaries
    adapter_path = os.path.join(cfg.output_dir, f"adapter.{cfg.checkpoint_format}")
    if rank_id == 0:
        save_adapter(net, adapter_path, config=net.pet_config)
    summary = {"config": cfg.summary(), "steps": trainer.step, "total_steps": total, "stop_step": stop,
               "rank_size": rank_size, "trainable": share["trainable"], "total_params": share["total"],
               "trainable_percent": share["percent"], "base_checkpoint": base["files"],
               "adapter": adapter_path, "eval_before": state.evals[0] if state.evals else None,
               "eval_after": after, "evals": state.evals, "final_loss": state.history[-1]["loss"] if state.history else None,
               "train_seconds": round(state.elapsed, 2), "wall_seconds": round(time.perf_counter() - wall_start, 2),
               "resumed_from_step": int(resume[0]["step"]) if resume else None}
    _write_json(os.path.join(cfg.output_dir, "ranks", f"rank_{rank_id}.json"),
                {"rank_id": rank_id, "rank_size": rank_size, "steps": trainer.step,
                 "adapter_sha256": _adapter_digest(net),
                 "final_loss": summary["final_loss"]})
    if rank_id == 0:
        _write_json(os.path.join(cfg.output_dir, "summary.json"), summary)
        cb.say(cb.summary_line(summary))
    return summary


def _eval_every(cfg, steps_per_epoch):
    """Optimizer steps between evaluations during training (do_eval), or 0 for none."""
    if not cfg.do_eval:
        return 0
    if cfg.eval_step_interval > 0:
        return cfg.eval_step_interval
    return cfg.eval_epoch_interval * max(steps_per_epoch, 1)


def _ignore_index(cfg):
    return cfg.llama_config.ignore_token_id if cfg.llama_config is not None else \
        cfg.model_config.get("ignore_token_id", -100)
