"""The train step cell: what happens to the gradients of one optimizer update, in one graph.

:class:`TrainStep` (GRAPH_MODE) takes the loss and gradients of the trainable parameters only, then
(with ``gradient_accumulation_steps = k > 1``) the sum of k micro-batch gradients kept in
``accu_grads.*`` parameters, the data-parallel all-reduce (``nn.DistributedGradReducer``, a sum over
the workers), division by the loss scale, an overflow check (with loss scaling), global-norm clipping
(``runner_wrapper.use_clip_grad``) and the AdamWeightDecay update. The lr comes from the optimizer's
table (:func:`mindpet_lite.train.schedule.lr_values`).

One global batch, one loss: the network returns the mean loss over its own micro-batch's label tokens
(``n`` of them). The loss of an optimizer step is the mean over all the label tokens of its global
batch (``N``: every micro-batch of every worker), so each micro-batch counts with weight ``n / N``:
its loss and its gradients are multiplied by that weight (through the backward's sensitivity) and then
summed over micro-batches and workers. ``N`` is this worker's count for the whole step (counted on the
host before the step's first micro-batch runs), all-reduced over the workers in the graph. When rows
carry different numbers of label tokens this is what makes 2 workers x B, 1 worker x 2B and
accumulation 2 x B the same update (a mean of per-micro-batch means is not).
"""
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype

__all__ = ["TrainStep"]


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
        network: a cell whose ``network(input_ids, labels)`` returns the scalar float32 loss, the mean
            over the micro-batch's label tokens.
        optimizer: the optimizer over the trainable parameters.
        accumulators: ParameterTuple like ``optimizer.parameters`` (needed when ``accumulate > 1``).
        accumulate: k micro-batches per update; the applied gradient is their token-weighted sum.
        apply: False: add this micro-batch's gradients to the accumulators and return the loss.
        scale_sense: Parameter holding the loss scale (1.0: no scaling).
        loss_scale_cell: ``nn.DynamicLossScaleUpdateCell`` for dynamic scaling, or None.
        check_overflow: skip the update when a gradient is not finite (with loss scaling).
        clip_norm: global-norm clipping threshold, or None.
        reducer: ``nn.DistributedGradReducer(..., mean=False)`` under data parallel (the gradients are
            already weighted by ``n / N``: the workers' shares are summed), or None.
        rank_size: workers (the returned loss is summed over them).

    Inputs:
        - **input_ids**, **labels** (int32 ``[B, seq_length + 1]``).
        - **tokens** (float32 0-d Tensor, optional) - label tokens of this micro-batch (``n``).
        - **step_tokens** (float32 0-d Tensor, optional) - label tokens of this worker's micro-batches
          of the whole optimizer step; summed over the workers it is ``N``.
        Without them every micro-batch of every worker weighs the same (``n = 1``, ``N = k x workers``).

    Output: the float32 loss times ``n / N``, summed over the workers: the micro-batch's share of the
    global batch's per-token mean loss (the shares of the step's micro-batches add up to it).
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
        self.unscale = self.dynamic or float(self.scale_sense.asnumpy()) != 1.0
        self.reducer = reducer
        self.reduce = reducer is not None
        self.rank_size = int(rank_size)
        self.reduce_loss = self.rank_size > 1
        if self.reduce_loss:
            self.allreduce = ops.AllReduce()
        self.default_step_tokens = Tensor(float(self.accumulate), mstype.float32)

    def _grad_factor(self, grads):
        """0-d float32 factor that unscales and clips the (summed, scaled) gradients in one multiply."""
        inv = 1.0 / ops.cast(self.scale_sense, mstype.float32)
        if not self.clip:
            return inv
        norm = ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads))) * inv
        return inv * (self.clip_norm / ops.maximum(norm, self.clip_norm))

    def construct(self, input_ids, labels, tokens=None, step_tokens=None):
        if tokens is None:
            tokens = ops.ones((), mstype.float32)
            step_tokens = self.default_step_tokens
        total = ops.cast(step_tokens, mstype.float32)
        if self.reduce_loss:
            total = self.allreduce(total)
        weight = ops.cast(tokens, mstype.float32) / ops.maximum(total, 1.0)  # n / N (0 when N is 0)
        loss = self.network(input_ids, labels)
        sens = ops.cast(self.scale_sense, mstype.float32) * weight * ops.ones_like(loss)
        grads = self.grad(self.network, self.weights)(input_ids, labels, sens)
        loss = loss * weight
        if self.reduce_loss:
            loss = self.allreduce(loss)
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
