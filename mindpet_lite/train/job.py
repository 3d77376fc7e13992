"""The whole LoRA fine-tuning job a RunConfig describes (:func:`finetune`), as one straight line::

    RunConfig -> context / data parallel -> datasets (checked) -> LlamaForCausalLM -> base checkpoint
      -> get_pet_model(net, run_config.pet_config) -> Trainer.fit (callbacks) -> held-out eval -> adapter

Each step is a function of its own module (schedule, step, loop, evaluation, callbacks, parallel); this
one wires them together, checks every input before the first step, and writes the summaries.

Reproducibility: the data order is fixed by ``seed`` (:func:`mindpet_lite.data.create_dataset`), the
LoRA init by ``mindspore.set_seed(seed)``. A resumed run skips the micro-batches already consumed and
restores the adapter, the optimizer moments, the global step (hence the lr) and the loss scale, so it
ends with the adapter of an uninterrupted run. LoRA dropout masks are drawn from MindSpore's global
random stream, which is not saved: with ``lora_dropout > 0`` a resumed run is statistically, not
bitwise, the same.
"""
import hashlib
import logging
import os
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor

from mindpet_lite import _files
from mindpet_lite.adapters import load_adapter, save_adapter
from mindpet_lite.adapters.io import adapter_parameters
from mindpet_lite.adapters.names import is_state_key
from mindpet_lite.data import check_token_ids, create_dataset
from mindpet_lite.integrations import mindformers as mf
from mindpet_lite.models.llama import LlamaForCausalLM, recompute_layers
from mindpet_lite.pet import get_pet_model
from mindpet_lite.train import callbacks as cb
from mindpet_lite.train.evaluation import evaluate
from mindpet_lite.train.loop import Trainer, TrainState
from mindpet_lite.train.cpu_threads import set_cpu_threads
from mindpet_lite.train.parallel import init_parallel

logger = logging.getLogger(__name__)

__all__ = ["build_model", "load_base_checkpoint", "finetune"]


# ------------------------------------------------------------------------------------------------
# model and base weights
# ------------------------------------------------------------------------------------------------
def build_model(run_config):
    """The network the RunConfig names: the built-in Llama, or a MindFormers model (Ascend)."""
    if run_config.backend == "mindformers":
        body = {k: v for k, v in run_config.model_config.items() if k != "pet_config"}
        return mf.build_model(body, run_config.arch_type)
    return LlamaForCausalLM(run_config.llama_config)


def _recompute(net, backend):
    """recompute_config.recompute on the built-in Llama (a MindFormers model reads it from its own config)."""
    if backend == "mindformers":
        logger.warning("recompute_config.recompute is applied to the built-in Llama only; a MindFormers "
                       "model takes it from model_config.recompute_config / parallel_config")
        return
    logger.info("recompute: %d decoder layers recompute their activations in the backward",
                recompute_layers(net))


def _checkpoint_files(path, rank_id):
    """The checkpoint file(s) that make up the base weights at ``path`` (a file or a directory), and
    whether they come from MindFormers' ``rank_*`` layout."""
    if os.path.isfile(path):
        _files.format_from_path(path)
        return [path], False
    if not os.path.isdir(path):
        raise FileNotFoundError(f"load_checkpoint: no such file or directory: {path}")
    ranks = dict(_files.rank_folders(path))
    folder = ranks.get(rank_id, next(iter(ranks.values()), path))
    files = _files.checkpoint_files_in(folder)
    if not files:
        raise FileNotFoundError(f"load_checkpoint: no .ckpt or .safetensors file in {folder}")
    if ranks and len(files) > 1:
        files = [_files.newest(files)]  # MindFormers keeps several steps per rank: the newest
    return files, bool(ranks)


def _read_weights(files):
    weights = {}
    for file in files:
        weights.update(_files.read_checkpoint(file)[0])
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
    skipped = [k for k in weights if is_state_key(k) or "mindpet_delta_" in k]
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
    set_cpu_threads(cfg.runtime_num_threads)
    if cfg.max_call_depth:
        ms.set_recursion_limit(cfg.max_call_depth)
    if cfg.max_device_memory and cfg.device_target != "CPU":
        ms.runtime.set_memory(max_size=cfg.max_device_memory)


def _setup_parallel(cfg):
    """(rank_id, rank_size): (0, 1) alone; under msrun with use_parallel, init() + DATA_PARALLEL
    (gradients_mean) via mindpet_lite.train.parallel. Runs before any data is read: in msrun's
    scheduler process init() never returns."""
    return init_parallel(cfg.device_target, cfg.use_parallel, cfg.data_parallel if cfg.use_parallel else None,
                         device_id=cfg.device_id)


def _open_data(cfg, dc, batch_size, rank_id, rank_size, repeat, train):
    if not dc.dataset_dir:
        which = "train_dataset" if train else "eval_dataset"
        raise ValueError(f"{which}.data_loader.dataset_dir is empty: give a MindRecord file "
                         f"(--{which}_dir PATH; build one with `mindpet-lite data`)")
    data = create_dataset(dc.dataset_dir, batch_size, seq_length=cfg.seq_length, rank_id=rank_id,
                          rank_size=rank_size, shuffle=dc.shuffle, seed=cfg.seed,
                          drop_remainder=dc.drop_remainder if not train else True,
                          num_parallel_workers=dc.num_parallel_workers, repeat=repeat)
    vocab_size = cfg.llama_config.vocab_size if cfg.llama_config is not None else cfg.model_config.get("vocab_size")
    if vocab_size:
        check_token_ids(dc.dataset_dir, vocab_size, _ignore_index(cfg))
    return data


def _check_outputs(cfg):
    """Where the run writes, checked before anything is built (and made only when training starts):
    output_dir and the checkpoint folder are directories or can be made, the checkpoint prefix is a
    file name, and no output is an input. A run owns its output_dir: an earlier run's files there
    are replaced."""
    ckpt_dir = cfg.checkpoint_dir or os.path.join(cfg.output_dir, "checkpoint")
    for what, folder in (("output_dir", cfg.output_dir), ("checkpoint directory", ckpt_dir)):
        existing = os.path.abspath(folder)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise NotADirectoryError(f"{what} {folder}: {existing} is a file, not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"{what} {folder}: {existing} is not writable")
    prefix = cfg.checkpoint_prefix
    if not prefix or os.sep in prefix or (os.altsep and os.altsep in prefix) or prefix in (".", ".."):
        raise ValueError(f"callbacks CheckpointMonitor prefix must be a file name prefix, got {prefix!r}")
    inputs = [p for p in (cfg.load_checkpoint, cfg.train_dataset.dataset_dir,
                          cfg.eval_dataset.dataset_dir if cfg.eval_dataset else None) if p]
    for name in (f"adapter.{cfg.checkpoint_format}", "summary.json", "loss.csv", "loss.png"):
        _files.check_new_output(os.path.join(cfg.output_dir, name), inputs, overwrite=True, what="output")
    return ckpt_dir


def _adapter_digest(net):
    """SHA-256 of the adapter's names and float32 values: data-parallel ranks must end with the same one."""
    digest = hashlib.sha256()
    for name, param in sorted(adapter_parameters(net).items()):  # LoRA factors and trainables (a prefix)
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(param.asnumpy(), dtype=np.float32).tobytes())
    return digest.hexdigest()


def finetune(run_config, after_train=None):
    """Run the LoRA fine-tuning job a RunConfig describes; returns its summary dict.

    ``after_train(net)``, if given, is called on rank 0 with the trained network once the adapter is
    saved (``run.py`` answers the held-out prompts with it: ``predict_after_train``); what it returns
    is ``summary['after_train']``.

    Every input is checked before the first step: the datasets (path, columns, row length, rows per
    worker), the base checkpoint (missing / mis-shaped parameters), the pet_config (its targets), the
    resume checkpoint. Writes under ``output_dir``: ``checkpoint/`` (see callbacks), ``adapter.<fmt>``,
    ``loss.csv``, ``loss.png``, ``summary.json`` (rank 0) and ``ranks/rank_<r>.json`` (every rank).
    """
    cfg = run_config
    wall_start = time.perf_counter()
    cfg.log_ignored()
    if cfg.sink_mode:
        logger.info("runner_config.sink_mode=True: accepted; steps are fed from Python on this runner")
    _set_context(cfg)
    rank_id, rank_size = _setup_parallel(cfg)
    ms.set_seed(cfg.seed)
    np.random.seed(cfg.seed)

    # 1. outputs and data (checked first: the cheapest inputs to get wrong)
    ckpt_dir = _check_outputs(cfg)
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
        resumed_at = int(resume[0].get("step", 0))
        if resumed_at > stop:
            raise ValueError(f"resume: {json_path} is at step {resumed_at}, beyond this run's last step {stop} "
                             f"({steps_in_data} steps in the data, max_steps={cfg.max_steps}): nothing to resume")
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
        if "pre_seq_len" in share:
            what = f"{share['pet_type']}: prefix of {share['pre_seq_len']} slots"
        else:
            method = "LoRA" if net.pet_config.pet_type == "lora" else net.pet_config.pet_type
            what = f"{method}: {share['num_replaced']} layers"
        cb.say(f"{what}, trainable {share['trainable']:,} / {share['total']:,} "
               f"parameters ({share['percent']:.3f}%)")

    trainer = Trainer(net, cfg.optimizer, cfg.lr_schedule, cfg.wrapper, total,
                      cfg.gradient_accumulation_steps, rank_size, ignore_index=_ignore_index(cfg))
    if resume is not None:
        meta, adapter_path, state_path = resume
        load_adapter(net, adapter_path)
        tensors, _ = _files.read_checkpoint(state_path)
        trainer.load_state_dict(tensors, meta)
        if meta.get("total_steps") != total:
            logger.warning("resume: the lr schedule length was %s, now %d: the lr curve changes",
                           meta.get("total_steps"), total)
        if rank_id == 0:
            cb.say(f"resumed from {adapter_path} at step {trainer.step}")
        consumed = trainer.step * cfg.gradient_accumulation_steps
        if consumed:
            train_data = train_data.skip(consumed)

    global_batch = cfg.batch_size * rank_size * cfg.gradient_accumulation_steps  # rows of one optimizer step
    state = TrainState(net=net, pet_config=net.pet_config, rank_id=rank_id, rank_size=rank_size,
                       global_batch=global_batch, seq_length=cfg.seq_length,
                       tokens_per_step=global_batch * cfg.seq_length)
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
        save_adapter(net, adapter_path, config=net.pet_config, overwrite=True)  # the run owns output_dir
    answered = after_train(net) if after_train is not None and rank_id == 0 else None
    summary = {"config": cfg.summary(), "steps": trainer.step, "total_steps": total, "stop_step": stop,
               "rank_size": rank_size, "trainable": share["trainable"], "total_params": share["total"],
               "trainable_percent": share["percent"], "base_checkpoint": base["files"],
               "adapter": adapter_path, "eval_before": state.evals[0] if state.evals else None,
               "eval_after": after, "evals": state.evals, "final_loss": state.history[-1]["loss"] if state.history else None,
               "train_seconds": round(state.elapsed, 2), "wall_seconds": round(time.perf_counter() - wall_start, 2),
               "resumed_from_step": int(resume[0]["step"]) if resume else None, "after_train": answered}
    _files.write_json(os.path.join(cfg.output_dir, "ranks", f"rank_{rank_id}.json"),
                {"rank_id": rank_id, "rank_size": rank_size, "steps": trainer.step,
                 "adapter_sha256": _adapter_digest(net),
                 "final_loss": summary["final_loss"]})
    if rank_id == 0:
        _files.write_json(os.path.join(cfg.output_dir, "summary.json"), summary)
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
