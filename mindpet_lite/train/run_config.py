"""RunConfig: a MindFormers run YAML (the one `run_mindformer.py --config` takes), read and checked once.

An existing MindFormers LoRA YAML (``configs/llama2/lora_llama2_7b.yaml``) is accepted as it is:

* keys the runner uses are validated (type, range, allowed names);
* keys it does not use (``processor``, ``metric``, ``trainer``, a data loader's
  ``numa_enable``, ...) are collected in ``RunConfig.ignored_keys`` and logged once, in one line;
* an unknown key in a section the runner uses that is close to a key it uses (``lerning_rate``) is a
  ``ValueError`` naming the key it probably meant.

Command-line flags (run_mindformer.py's names, see :func:`add_run_arguments`) override the YAML:
``RunConfig.from_yaml(path, overrides)`` applies them to the raw mapping before anything is checked,
so a flag is validated exactly like the YAML key it replaces.

What the parallel keys mean on this backend: training is always data parallel (DATA_PARALLEL with
``gradients_mean=True``: each worker's loss is the mean over its own batch). ``parallel.parallel_mode``
0 or 1 is accepted (semi-auto with ``model_parallel = pipeline_stage = 1`` is data parallel);
``model_parallel`` / ``pipeline_stage`` / ``context_parallel`` / ``expert_parallel`` other than 1 are
errors under ``use_parallel``; ``parallel_config.data_parallel`` must equal the number of msrun workers.
``auto_trans_ckpt`` is accepted: a data-parallel checkpoint needs no resharding, and a directory of
``rank_*`` checkpoints loads only when rank_0's file holds the whole model (otherwise a clear error).
``runner_config.batch_size`` is per worker and wins over ``train_dataset.batch_size`` (as in MindFormers);
``sink_mode`` / ``sink_size`` are accepted (steps are fed from Python).

Extensions over MindFormers' keys (all optional): ``runner_config.max_steps`` (stop after this many
optimizer steps; the lr schedule keeps its full length, so an interrupted run and a resumed one follow
the same curve), ``runner_wrapper.max_grad_norm`` (MindFormers' MFTrainOneStepCell default 1.0),
``optimizer.betas`` as an alternative to ``beta1``/``beta2``, ``lr_schedule.warmup_steps`` as an
alternative to ``warmup_ratio``.

``do_eval: True`` scores ``eval_dataset`` every ``eval_step_interval`` optimizer steps (if > 0), else
every ``eval_epoch_interval`` epochs, as MindFormers' EvalCallBack does; the held-out score before and
after training is taken whenever ``eval_dataset`` is set.

``recompute_config.recompute: True`` recomputes each decoder layer's activations in the backward
(MindSpore's ``Cell.recompute``) on the built-in Llama: less memory for more compute (benchmarks/README.md
has the measured trade). Its other keys (``select_recompute``, ...) are Ascend-side refinements and are
listed as ignored.
"""
import argparse
import copy
import dataclasses
import importlib.util
import logging
import os
from typing import Any, Optional

import yaml

from mindpet_lite import _checks

logger = logging.getLogger(__name__)

__all__ = ["RunConfig", "OptimizerConfig", "LrScheduleConfig", "DatasetConfig", "WrapperConfig",
           "add_run_arguments", "overrides_from_args", "load_run_config", "MINDFORMERS_ARCHS"]

# Optimizer names MindFormers YAMLs use -> what runs here (all are AdamW with decoupled decay).
OPTIMIZER_TYPES = {
    "AdamWeightDecay": "AdamWeightDecay", "AdamW": "AdamWeightDecay", "adamw": "AdamWeightDecay",
    "FusedAdamWeightDecay": "AdamWeightDecay", "FP32StateAdamWeightDecay": "AdamWeightDecay",
    "FP32StateAdamW": "AdamWeightDecay",
}
LR_TYPES = {"CosineWithWarmUpLR": "cosine", "cosine": "cosine", "ConstantWarmUpLR": "constant",
            "constant": "constant"}
RUN_MODES = ("finetune", "train")
# model.arch.type values that are MindFormers model classes; LlamaForCausalLM is also the built-in.
MINDFORMERS_ARCHS = frozenset({"LlamaForCausalLM", "LlamaForCausalLMForCustom", "ParallelLlamaForCausalLM",
                               "Qwen2ForCausalLM", "BaichuanForCausalLM", "GLMForCausalLM",
                               "ChatGLM2ForConditionalGeneration", "TelechatForCausalLM",
                               "InternLMForCausalLM", "MixtralForCausalLM", "DeepseekV3ForCausalLM"})
BUILTIN_ARCHS = frozenset({"LlamaForCausalLM"})
DEVICE_TARGETS = ("CPU", "Ascend", "GPU")

# ---- which keys of which section the runner uses, and which MindFormers keys it knowingly skips ----
_TOP_USED = ("seed", "output_dir", "load_checkpoint", "auto_trans_ckpt", "resume_training", "run_mode",
             "runner_config", "optimizer", "lr_schedule", "train_dataset", "eval_dataset", "use_parallel",
             "parallel", "parallel_config", "callbacks", "context", "model", "runner_wrapper",
             "recompute_config", "do_eval", "eval_step_interval", "eval_epoch_interval")
_TOP_IGNORED = ("trainer", "src_strategy_path_or_dir", "only_save_strategy", "train_dataset_task",
                "eval_dataset_task", "micro_batch_interleave_num",
                "processor", "metric", "eval_callbacks", "auto_tune", "filepath_prefix",
                "autotune_per_step", "profile", "profile_start_step", "profile_stop_step",
                "init_start_profile", "profile_communication", "profile_memory", "layer_scale",
                "layer_decay", "lr_scale", "lr_scale_factor", "remote_save_url", "moe_config",
                "transform_process_num", "load_ckpt_format", "load_ckpt_async", "use_legacy",
                "swap_config", "monitor_config", "tensorboard", "ignore_data_skip", "data_skip_steps",
                "use_ckpt_load_balancing", "check_for_nan_in_loss_and_grad", "adapter_id",
                "input_data", "predict_batch_size", "infer_precision_sync", "postprocess_use_numpy",
                "context_parallel", "print_separate_loss", "resume_by_meta", "skip_trans_ckpt",
                "save_file", "remove_redundancy", "train_precision_sync")
_RUNNER_USED = ("epochs", "batch_size", "sink_mode", "sink_size", "gradient_accumulation_steps", "max_steps")
_RUNNER_IGNORED = ("initial_epoch", "initial_step", "per_epoch_size", "stop_step", "num_samples")
_OPT_USED = ("type", "beta1", "beta2", "betas", "eps", "weight_decay", "learning_rate")
_OPT_IGNORED = ("use_fused", "loss_scale", "amsgrad", "maximize", "swap")
_LR_USED = ("type", "learning_rate", "warmup_ratio", "warmup_steps", "warmup_lr_init", "lr_end",
            "total_steps")
_LR_IGNORED = ("decay_steps", "decay_ratio", "min_lr", "warmup_epochs", "num_cycles", "power", "end_learning_rate")
_DATA_USED = ("data_loader", "input_columns", "batch_size", "drop_remainder", "num_parallel_workers")
_DATA_IGNORED = ("output_columns", "python_multiprocessing", "numa_enable", "prefetch_size", "repeat",
                 "construct_args_key", "pad_token_id", "divisor", "remainder", "eod_reset",
                 "tokenizer", "seed", "column_names", "type", "dynamic_batch", "pad_to_max_length",
                 "max_length", "text_transforms", "auto_tune", "filepath_prefix", "autotune_per_step",
                 "profile", "create_compressed_eod_mask", "compressed_eod_mask_length", "input_columns_rename")
_LOADER_USED = ("type", "dataset_dir", "shuffle")
_LOADER_IGNORED = ("num_samples", "shard_id", "num_shards", "columns_list", "shuffle_buffer_size",
                   "file_format", "data_files", "path", "sampler", "num_parallel_workers", "split")
_PARALLEL_USED = ("parallel_mode", "gradients_mean", "full_batch")
_PARALLEL_IGNORED = ("enable_alltoall", "search_mode", "enable_parallel_optimizer", "strategy_ckpt_config",
                     "parallel_optimizer_config", "strategy_ckpt_save_file", "strategy_ckpt_load_file",
                     "pipeline_config", "dataset_strategy", "loss_repeated_mean", "device_num",
                     "enable_fold_pipeline")
_PCONFIG_USED = ("data_parallel", "model_parallel", "pipeline_stage", "context_parallel", "expert_parallel")
_PCONFIG_IGNORED = ("use_seq_parallel", "micro_batch_num", "vocab_emb_dp", "gradient_aggregation_group",
                    "optimizer_shard", "recompute", "context_parallel_algo", "ulysses_degree_in_cp",
                    "mem_coeff", "select_recompute", "seq_split_num")
_CONTEXT_USED = ("mode", "device_target", "device_id", "max_device_memory", "max_call_depth")
_CONTEXT_IGNORED = ("save_graphs", "save_graphs_path", "jit_config", "memory_optimize_level",
                    "mempool_block_size", "runtime_num_threads", "enable_graph_kernel", "graph_kernel_flags",
                    "ascend_config", "affinity_cpu_list", "deterministic", "jit_level", "infer_boost",
                    "enable_compile_cache", "compile_cache_path", "affinity_config", "pynative_synchronize")
_RECOMPUTE_USED = ("recompute",)
_RECOMPUTE_IGNORED = ("select_recompute", "select_comm_recompute", "parallel_optimizer_comm_recompute",
                      "mp_comm_recompute", "recompute_slice_activation", "select_recompute_exclude",
                      "select_comm_recompute_exclude")
_MODEL_USED = ("model_config", "arch")
_ARCH_USED = ("type",)
_WRAPPER_USED = ("type", "scale_sense", "use_clip_grad", "max_grad_norm")
_WRAPPER_IGNORED = ("local_norm", "calculate_per_token_loss", "use_skip_data_by_global_norm",
                    "global_norm_spike_threshold", "use_grad_norm_warmup", "enable_global_norm")
_SCALE_USED = ("type", "loss_scale_value", "scale_factor", "scale_window")
_LOSS_MONITOR_USED = ("type", "per_print_times")
_CKPT_MONITOR_USED = ("type", "prefix", "save_checkpoint_steps", "keep_checkpoint_max", "directory",
                      "checkpoint_format")
_CALLBACKS_USED = ("MFLossMonitor", "CheckpointMonitor")
_CALLBACKS_IGNORED = ("ObsMonitor", "SummaryMonitor", "ProfileMonitor", "EvalCallBack", "TrainingStateMonitor",
                      "StressDetectCallBack", "TopkBiasBalanceCallback", "MoEDropRateCallback",
                      "ColdHotExpertMonitor", "TrainFaultTolerance", "LossMonitor", "TimeMonitor")


class _Reader:
    """Reads sections of the raw mapping, collecting ignored keys and refusing misspelled ones."""

    def __init__(self, source):
        self.source = source
        self.ignored = []

    def section(self, path, data, used, ignored=()):
        """{key: value} of the used keys of `data` (a mapping or None)."""
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise TypeError(f"{self.source}: {path} must be a mapping, got {_checks.describe(data)}")
        out = {}
        for key, value in data.items():
            if key in used:
                out[key] = value
                continue
            if key not in ignored:
                hint = _checks.closest(key, used)
                if hint is not None:
                    raise ValueError(f"{self.source}: {path}: unknown key '{key}'; did you mean '{hint}'? "
                                     f"(keys used here: {', '.join(used)})")
            self.ignored.append(f"{path}.{key}" if path else str(key))
        return out


# ---- small typed checks --------------------------------------------------------------------------
def _int(name, value, minimum=None, allow_none=False):
    if value is None and allow_none:
        return None
    if not _checks.is_int(value):
        raise TypeError(f"{name} must be an int{'' if minimum is None else f' >= {minimum}'}, "
                        f"got {_checks.describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {_checks.describe(value)}")
    return int(value)


def _float(name, value, minimum=None, maximum=None, allow_none=False, open_min=False):
    if value is None and allow_none:
        return None
    if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if not _checks.is_number(value):
        raise TypeError(f"{name} must be a number, got {_checks.describe(value)}")
    bad = (minimum is not None and (value <= minimum if open_min else value < minimum)) or \
        (maximum is not None and value > maximum)
    if bad:
        lo = "" if minimum is None else (f"> {minimum}" if open_min else f">= {minimum}")
        hi = "" if maximum is None else f"<= {maximum}"
        raise ValueError(f"{name} must be a number {' and '.join(x for x in (lo, hi) if x)}, "
                         f"got {_checks.describe(value)}")
    return float(value)


def _bool(name, value):
    """A bool; also the strings MindFormers' str2bool takes ('True', 'false', ...)."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return _checks.check_bool(name, value)


def str2bool(text):
    """argparse type: 'True'/'False' (any case) -> bool, as run_mindformer.py's str2bool."""
    if isinstance(text, bool):
        return text
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


# ---- sections --------------------------------------------------------------------------------------
@dataclasses.dataclass
class OptimizerConfig:
    """AdamW with decoupled weight decay (MindSpore's ``nn.AdamWeightDecay``)."""
    type: str = "AdamWeightDecay"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    yaml_type: str = "AdamWeightDecay"


@dataclasses.dataclass
class LrScheduleConfig:
    """Warmup then cosine decay to ``lr_end`` (``cosine``) or constant (``constant``).

    ``warmup_steps`` wins over ``warmup_ratio`` (of the schedule length); ``total_steps`` <= 0 or None
    means the whole run (epochs x optimizer steps per epoch). Values: ``trainer.lr_at``.
    """
    type: str = "cosine"
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.0
    warmup_steps: Optional[int] = None
    warmup_lr_init: float = 0.0
    lr_end: float = 0.0
    total_steps: Optional[int] = None
    yaml_type: str = "CosineWithWarmUpLR"


@dataclasses.dataclass
class DatasetConfig:
    """A MindRecord file with int ``input_ids`` and ``labels`` rows of ``seq_length + 1`` tokens."""
    dataset_dir: str = ""
    shuffle: bool = True
    input_columns: tuple = ("input_ids", "labels")
    batch_size: Optional[int] = None
    drop_remainder: bool = True
    num_parallel_workers: int = 1


@dataclasses.dataclass
class WrapperConfig:
    """The train step: loss scaling, gradient clipping (MindFormers' ``runner_wrapper``)."""
    type: str = "MFTrainOneStepCell"
    scale_sense: float = 1.0
    dynamic_loss_scale: bool = False
    scale_factor: float = 2.0
    scale_window: int = 1000
    use_clip_grad: bool = False
    max_grad_norm: float = 1.0


@dataclasses.dataclass
class RunConfig:
    """Everything the runner needs, validated. Build with :meth:`from_yaml` or :meth:`from_dict`."""
    seed: int = 0
    output_dir: str = "./output"
    load_checkpoint: str = ""
    auto_trans_ckpt: bool = False
    resume: Any = False                      # False, True (latest in output_dir) or a path
    run_mode: str = "finetune"
    epochs: int = 1
    batch_size: int = 1                      # per worker
    sink_mode: bool = False
    sink_size: int = 1
    gradient_accumulation_steps: int = 1
    max_steps: Optional[int] = None
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    lr_schedule: LrScheduleConfig = dataclasses.field(default_factory=LrScheduleConfig)
    train_dataset: DatasetConfig = dataclasses.field(default_factory=DatasetConfig)
    eval_dataset: Optional[DatasetConfig] = None
    use_parallel: bool = False
    parallel_mode: int = 0
    data_parallel: int = 1
    mode: int = 0                            # 0 GRAPH_MODE, 1 PYNATIVE_MODE
    device_target: str = "CPU"
    device_id: int = 0
    max_device_memory: Optional[str] = None
    max_call_depth: Optional[int] = None
    recompute: bool = False                  # recompute_config.recompute (built-in Llama)
    do_eval: bool = False                    # score eval_dataset during training too
    eval_step_interval: int = 100            # MindFormers' defaults; a value <= 0 turns that rule off
    eval_epoch_interval: int = 50
    model_config: dict = dataclasses.field(default_factory=dict)
    arch_type: str = "LlamaForCausalLM"
    backend: str = "builtin"                 # 'builtin' or 'mindformers'
    llama_config: Any = None                 # models.llama.LlamaConfig for the built-in model
    pet_config: Any = None                   # pet.config.LoraConfig
    wrapper: WrapperConfig = dataclasses.field(default_factory=WrapperConfig)
    log_every: int = 1
    save_checkpoint_steps: Optional[int] = None
    keep_checkpoint_max: int = 3
    checkpoint_prefix: str = "lora"
    checkpoint_dir: Optional[str] = None
    checkpoint_format: str = "ckpt"
    ignored_keys: list = dataclasses.field(default_factory=list)
    source: str = "<dict>"

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path, overrides=None):
        """Read a MindFormers run YAML, apply flag `overrides` (see :func:`overrides_from_args`), check."""
        data = _checks.load_yaml_mapping(path, "run config")
        path = os.fspath(path)
        return cls.from_dict(data, overrides=overrides, source=path)

    @classmethod
    def from_dict(cls, data, overrides=None, source="<dict>"):
        """From the raw mapping of a run YAML (not modified); `overrides` {dotted.key: value}."""
        if not isinstance(data, dict):
            raise TypeError(f"run config must be a mapping, got {_checks.describe(data)}")
        data = copy.deepcopy(data)
        for key, value in (overrides or {}).items():
            _set_dotted(data, key, value)
        return _parse(data, source)

    # ---- derived ---------------------------------------------------------------------------------
    @property
    def seq_length(self):
        return self.llama_config.seq_length if self.llama_config is not None else \
            self.model_config.get("seq_length")

    def log_ignored(self):
        """One log line listing the keys of the YAML this runner does not use."""
        if self.ignored_keys:
            logger.info("%s: keys not used by mindpet_lite (ignored): %s", self.source,
                        ", ".join(self.ignored_keys))

    def summary(self):
        """A short dict of the settings that shape the run (for logs and the run summary)."""
        return {"config": self.source, "seed": self.seed, "epochs": self.epochs, "batch_size": self.batch_size,
                "gradient_accumulation_steps": self.gradient_accumulation_steps, "max_steps": self.max_steps,
                "optimizer": self.optimizer.yaml_type, "lr_schedule": self.lr_schedule.yaml_type,
                "learning_rate": self.lr_schedule.learning_rate, "use_parallel": self.use_parallel,
                "data_parallel": self.data_parallel, "device_target": self.device_target, "recompute": self.recompute,
                "do_eval": self.do_eval,
                "backend": self.backend, "pet_config": self.pet_config.to_dict() if self.pet_config else None}


def _set_dotted(data, key, value):
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _parse(data, source):
    r = _Reader(source)
    top = r.section("", data, _TOP_USED, _TOP_IGNORED)
    cfg = RunConfig(source=source)

    cfg.seed = _int("seed", top.get("seed", 0), minimum=0)
    cfg.output_dir = _checks.check_str("output_dir", top.get("output_dir") or "./output")
    ckpt = top.get("load_checkpoint") or ""
    if not isinstance(ckpt, str):
        raise TypeError(f"load_checkpoint must be a path string, got {_checks.describe(ckpt)}")
    cfg.load_checkpoint = ckpt
    cfg.auto_trans_ckpt = _bool("auto_trans_ckpt", top.get("auto_trans_ckpt", False))
    resume = top.get("resume_training", False)
    if isinstance(resume, str) and resume.lower() in ("true", "false"):
        resume = resume.lower() == "true"
    if not isinstance(resume, (bool, str)) or resume == "":
        raise TypeError("resume_training must be a bool or the path of a checkpoint directory / state file, "
                        f"got {_checks.describe(resume)}")
    cfg.resume = resume
    run_mode = top.get("run_mode", "finetune")
    if run_mode not in RUN_MODES:
        raise ValueError(f"run_mode must be one of {list(RUN_MODES)} (this runner trains; eval and predict "
                         f"are MindFormers' run modes it does not provide), got {_checks.describe(run_mode)}")
    cfg.run_mode = run_mode

    # runner_config
    rc = r.section("runner_config", top.get("runner_config"), _RUNNER_USED, _RUNNER_IGNORED)
    cfg.epochs = _int("runner_config.epochs", rc.get("epochs", 1), minimum=1)
    runner_batch = _int("runner_config.batch_size", rc.get("batch_size"), minimum=1, allow_none=True)
    cfg.sink_mode = _bool("runner_config.sink_mode", rc.get("sink_mode", False))
    cfg.sink_size = _int("runner_config.sink_size", rc.get("sink_size", 1), minimum=-1)
    cfg.gradient_accumulation_steps = _int("runner_config.gradient_accumulation_steps",
                                           rc.get("gradient_accumulation_steps", 1) or 1, minimum=1)
    cfg.max_steps = _int("max_steps", rc.get("max_steps"), minimum=0, allow_none=True)
    if cfg.max_steps is not None and cfg.max_steps <= 0:
        cfg.max_steps = None

    cfg.optimizer, opt_lr = _parse_optimizer(r, top.get("optimizer"))
    cfg.lr_schedule = _parse_lr(r, top.get("lr_schedule"), opt_lr)

    # datasets
    cfg.train_dataset = _parse_dataset(r, "train_dataset", top.get("train_dataset"), train=True)
    batch = runner_batch or cfg.train_dataset.batch_size or 1
    if runner_batch and cfg.train_dataset.batch_size and runner_batch != cfg.train_dataset.batch_size:
        logger.info("runner_config.batch_size=%d wins over train_dataset.batch_size=%d (as in MindFormers)",
                    runner_batch, cfg.train_dataset.batch_size)
    cfg.batch_size = batch
    if top.get("eval_dataset") is not None:
        ev = _parse_dataset(r, "eval_dataset", top.get("eval_dataset"), train=False)
        cfg.eval_dataset = ev if ev.dataset_dir else None
    cfg.do_eval = _bool("do_eval", top.get("do_eval", False))
    cfg.eval_step_interval = _int("eval_step_interval", top.get("eval_step_interval", 100))
    cfg.eval_epoch_interval = _int("eval_epoch_interval", top.get("eval_epoch_interval", 50))
    if cfg.do_eval and cfg.eval_dataset is None:
        raise ValueError("do_eval is True but eval_dataset.data_loader.dataset_dir is not set "
                         "(set it, or pass --eval_dataset_dir)")
    if cfg.do_eval and cfg.eval_step_interval <= 0 and cfg.eval_epoch_interval <= 0:
        raise ValueError(f"do_eval is True but eval_step_interval ({cfg.eval_step_interval}) and "
                         f"eval_epoch_interval ({cfg.eval_epoch_interval}) are both <= 0: set one > 0")

    # parallel
    cfg.use_parallel = _bool("use_parallel", top.get("use_parallel", False))
    par = r.section("parallel", top.get("parallel"), _PARALLEL_USED, _PARALLEL_IGNORED)
    mode = par.get("parallel_mode", 0)
    if mode not in (0, 1, 2, 3):
        raise ValueError(f"parallel.parallel_mode must be 0 (data), 1 (semi-auto), 2 (auto) or 3 (hybrid), "
                         f"got {_checks.describe(mode)}")
    cfg.parallel_mode = mode
    for key in ("gradients_mean", "full_batch"):
        if key in par:
            _bool(f"parallel.{key}", par[key])
    pc = r.section("parallel_config", top.get("parallel_config"), _PCONFIG_USED, _PCONFIG_IGNORED)
    cfg.data_parallel = _int("parallel_config.data_parallel", pc.get("data_parallel", 1), minimum=1)
    for key in ("model_parallel", "pipeline_stage", "context_parallel", "expert_parallel"):
        value = _int(f"parallel_config.{key}", pc.get(key, 1), minimum=1)
        if value != 1 and cfg.use_parallel:
            raise ValueError(f"parallel_config.{key} must be 1: this runner trains data parallel only "
                             f"(every worker holds the whole model), got {value}")

    # context
    ctx = r.section("context", top.get("context"), _CONTEXT_USED, _CONTEXT_IGNORED)
    mode = ctx.get("mode", 0)
    mode = {"GRAPH_MODE": 0, "PYNATIVE_MODE": 1}.get(mode, mode)
    if mode not in (0, 1):
        raise ValueError(f"context.mode must be 0 (GRAPH_MODE) or 1 (PYNATIVE_MODE), got {_checks.describe(mode)}")
    cfg.mode = mode
    target = ctx.get("device_target", "CPU")
    if target not in DEVICE_TARGETS:
        hint = {t.lower(): t for t in DEVICE_TARGETS}.get(str(target).lower()) or _checks.closest(target, DEVICE_TARGETS)
        raise ValueError(f"context.device_target must be one of {list(DEVICE_TARGETS)}, got "
                         f"{_checks.describe(target)}" + (f"; did you mean '{hint}'?" if hint else ""))
    cfg.device_target = target
    cfg.device_id = _int("context.device_id", ctx.get("device_id", 0), minimum=0)
    mem = ctx.get("max_device_memory")
    if mem is not None and not isinstance(mem, str):
        raise TypeError(f"context.max_device_memory must be a string such as '59GB', got {_checks.describe(mem)}")
    cfg.max_device_memory = mem
    cfg.max_call_depth = _int("context.max_call_depth", ctx.get("max_call_depth"), minimum=1, allow_none=True)

    rec = r.section("recompute_config", top.get("recompute_config"), _RECOMPUTE_USED, _RECOMPUTE_IGNORED)
    value = rec.get("recompute", False)
    if isinstance(value, (list, tuple)):
        raise ValueError("recompute_config.recompute must be True or False here (a list of layer counts per "
                         f"pipeline stage needs pipeline parallel, which this runner does not do), got "
                         f"{_checks.describe(value)}")
    cfg.recompute = _bool("recompute_config.recompute", value)

    _parse_model(r, cfg, top.get("model"))
    cfg.wrapper = _parse_wrapper(r, top.get("runner_wrapper"))
    _parse_callbacks(r, cfg, top.get("callbacks"))

    cfg.ignored_keys = r.ignored
    return cfg


def _parse_optimizer(r, data):
    sec = r.section("optimizer", data, _OPT_USED, _OPT_IGNORED)
    yaml_type = sec.get("type", "AdamWeightDecay")
    if yaml_type not in OPTIMIZER_TYPES:
        hint = _checks.closest(yaml_type, OPTIMIZER_TYPES)
        raise ValueError(f"optimizer.type must be one of {sorted(OPTIMIZER_TYPES)} (all run as AdamWeightDecay), "
                         f"got {_checks.describe(yaml_type)}" + (f"; did you mean '{hint}'?" if hint else ""))
    opt = OptimizerConfig(type=OPTIMIZER_TYPES[yaml_type], yaml_type=yaml_type)
    if "betas" in sec:
        betas = sec["betas"]
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise TypeError(f"optimizer.betas must be a list of two numbers, got {_checks.describe(betas)}")
        opt.beta1, opt.beta2 = betas
    opt.beta1 = _float("optimizer.beta1", sec.get("beta1", opt.beta1), 0.0, 1.0)
    opt.beta2 = _float("optimizer.beta2", sec.get("beta2", opt.beta2), 0.0, 1.0)
    if opt.beta1 >= 1.0 or opt.beta2 >= 1.0:
        raise ValueError(f"optimizer.beta1 and beta2 must be in [0, 1), got {opt.beta1}, {opt.beta2}")
    opt.eps = _float("optimizer.eps", sec.get("eps", opt.eps), 0.0, open_min=True)
    opt.weight_decay = _float("optimizer.weight_decay", sec.get("weight_decay", 0.0), 0.0)
    lr = sec.get("learning_rate")
    if lr is not None:
        lr = _float("optimizer.learning_rate", lr, 0.0, open_min=True)
    return opt, lr


def _parse_lr(r, data, optimizer_lr):
    sec = r.section("lr_schedule", data, _LR_USED, _LR_IGNORED)
    yaml_type = sec.get("type", "CosineWithWarmUpLR" if data else "constant")
    if yaml_type not in LR_TYPES:
        hint = _checks.closest(yaml_type, LR_TYPES)
        raise ValueError(f"lr_schedule.type must be one of {sorted(LR_TYPES)}, got {_checks.describe(yaml_type)}"
                         + (f"; did you mean '{hint}'?" if hint else ""))
    lr = sec.get("learning_rate", optimizer_lr)
    if lr is None:
        raise ValueError("lr_schedule.learning_rate (or optimizer.learning_rate) is missing")
    sched = LrScheduleConfig(type=LR_TYPES[yaml_type], yaml_type=yaml_type,
                             learning_rate=_float("lr_schedule.learning_rate", lr, 0.0, open_min=True))
    sched.warmup_ratio = _float("lr_schedule.warmup_ratio", sec.get("warmup_ratio") or 0.0, 0.0, 1.0)
    sched.warmup_steps = _int("lr_schedule.warmup_steps", sec.get("warmup_steps"), minimum=0, allow_none=True)
    sched.warmup_lr_init = _float("lr_schedule.warmup_lr_init", sec.get("warmup_lr_init", 0.0), 0.0)
    sched.lr_end = _float("lr_schedule.lr_end", sec.get("lr_end", 0.0), 0.0)
    total = _int("lr_schedule.total_steps", sec.get("total_steps"), allow_none=True)
    sched.total_steps = total if total is not None and total > 0 else None
    return sched


def _parse_dataset(r, name, data, train):
    if data is None:
        data = {}
    sec = r.section(name, data, _DATA_USED, _DATA_IGNORED)
    loader = r.section(f"{name}.data_loader", sec.get("data_loader"), _LOADER_USED, _LOADER_IGNORED)
    ltype = loader.get("type", "MindDataset")
    if ltype != "MindDataset":
        raise ValueError(f"{name}.data_loader.type must be MindDataset (a .mindrecord file with input_ids and "
                         f"labels; convert JSON with `mindpet-lite data`), got {_checks.describe(ltype)}")
    out = DatasetConfig()
    path = loader.get("dataset_dir") or ""
    if not isinstance(path, str):
        raise TypeError(f"{name}.data_loader.dataset_dir must be a path string, got {_checks.describe(path)}")
    out.dataset_dir = path
    out.shuffle = _bool(f"{name}.data_loader.shuffle", loader.get("shuffle", train))
    cols = sec.get("input_columns", ["input_ids", "labels"])
    if not isinstance(cols, (list, tuple)) or not all(isinstance(c, str) for c in cols):
        raise TypeError(f"{name}.input_columns must be a list of column names, got {_checks.describe(cols)}")
    if train and not {"input_ids", "labels"} <= set(cols):
        raise ValueError(f"{name}.input_columns must hold 'input_ids' and 'labels' (fine-tuning trains on the "
                         f"labels, prompt tokens masked with -100), got {list(cols)}")
    out.input_columns = tuple(cols)
    out.batch_size = _int(f"{name}.batch_size", sec.get("batch_size"), minimum=1, allow_none=True)
    out.drop_remainder = _bool(f"{name}.drop_remainder", sec.get("drop_remainder", train))
    out.num_parallel_workers = _int(f"{name}.num_parallel_workers", sec.get("num_parallel_workers", 1), minimum=1)
    return out


def _parse_model(r, cfg, data):
    if data is None:
        raise ValueError(f"{cfg.source}: the 'model' section is missing (model.model_config with pet_config, "
                         "model.arch.type)")
    sec = r.section("model", data, _MODEL_USED)
    model_config = sec.get("model_config")
    if not isinstance(model_config, dict):
        raise ValueError(f"model.model_config must be a mapping, got {_checks.describe(model_config)}")
    arch = r.section("model.arch", sec.get("arch") or {}, _ARCH_USED)
    cfg.arch_type = arch.get("type", "LlamaForCausalLM")
    cfg.model_config = dict(model_config)

    from mindpet_lite.pet.config import LoraConfig  # pylint: disable=import-outside-toplevel
    pet = model_config.get("pet_config")
    if pet is None:
        raise ValueError("model.model_config.pet_config is missing: this runner fine-tunes with LoRA "
                         "(pet_type: lora, lora_rank, lora_alpha, lora_dropout, target_modules)")
    cfg.pet_config = LoraConfig.from_dict(pet, section="model.model_config.pet_config")

    use_mf = (cfg.arch_type in MINDFORMERS_ARCHS and cfg.device_target == "Ascend"
              and importlib.util.find_spec("mindformers") is not None)
    cfg.backend = "mindformers" if use_mf else "builtin"
    if cfg.backend == "builtin" and cfg.arch_type not in BUILTIN_ARCHS:
        raise ValueError(f"model.arch.type {cfg.arch_type!r}: the built-in model is LlamaForCausalLM; other "
                         "MindFormers classes need device_target Ascend with mindformers installed")
    from mindpet_lite.models.llama import LlamaConfig  # pylint: disable=import-outside-toplevel
    if cfg.arch_type in BUILTIN_ARCHS:
        body = {k: v for k, v in model_config.items() if k != "pet_config"}
        try:
            cfg.llama_config = LlamaConfig.from_dict(body)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{cfg.source}: model.model_config: {err}") from err
        r.ignored.extend(f"model.model_config.{k}" for k in cfg.llama_config.ignored_keys if k != "type")


def _parse_wrapper(r, data):
    sec = r.section("runner_wrapper", data, _WRAPPER_USED, _WRAPPER_IGNORED)
    w = WrapperConfig(type=sec.get("type", "MFTrainOneStepCell"))
    scale = sec.get("scale_sense", 1.0)
    if isinstance(scale, dict):
        s = r.section("runner_wrapper.scale_sense", scale, _SCALE_USED)
        kind = s.get("type", "DynamicLossScaleUpdateCell")
        if kind not in ("DynamicLossScaleUpdateCell", "FixedLossScaleUpdateCell"):
            raise ValueError("runner_wrapper.scale_sense.type must be DynamicLossScaleUpdateCell or "
                             f"FixedLossScaleUpdateCell, got {_checks.describe(kind)}")
        w.dynamic_loss_scale = kind == "DynamicLossScaleUpdateCell"
        w.scale_sense = _float("runner_wrapper.scale_sense.loss_scale_value", s.get("loss_scale_value", 65536),
                               0.0, open_min=True)
        w.scale_factor = _float("runner_wrapper.scale_sense.scale_factor", s.get("scale_factor", 2), 1.0,
                                open_min=True)
        w.scale_window = _int("runner_wrapper.scale_sense.scale_window", s.get("scale_window", 1000), minimum=1)
    else:
        w.scale_sense = _float("runner_wrapper.scale_sense", scale, 0.0, open_min=True)
    w.use_clip_grad = _bool("runner_wrapper.use_clip_grad", sec.get("use_clip_grad", False))
    w.max_grad_norm = _float("runner_wrapper.max_grad_norm", sec.get("max_grad_norm", 1.0), 0.0, open_min=True)
    return w


def _parse_callbacks(r, cfg, data):
    if data is None:
        return
    if not isinstance(data, list):
        raise TypeError(f"callbacks must be a list of mappings with a 'type', got {_checks.describe(data)}")
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "type" not in item:
            raise TypeError(f"callbacks[{i}] must be a mapping with a 'type', got {_checks.describe(item)}")
        kind = item["type"]
        path = f"callbacks[{i}]({kind})"
        if kind == "MFLossMonitor":
            sec = r.section(path, item, _LOSS_MONITOR_USED, ("learning_rate", "micro_batch_num", "origin_epochs",
                                                             "dataset_size", "initial_epoch", "initial_step",
                                                             "global_batch_size", "gradient_accumulation_steps",
                                                             "check_for_nan_in_loss_and_grad"))
            cfg.log_every = _int(f"{path}.per_print_times", sec.get("per_print_times", 1), minimum=1)
        elif kind == "CheckpointMonitor":
            sec = r.section(path, item, _CKPT_MONITOR_USED,
                            ("integrated_save", "async_save", "save_network_params", "save_trainable_params",
                             "remove_redundancy", "save_checkpoint_seconds",
                             "keep_checkpoint_per_n_minutes", "save_last_step", "embedding_local_norm_threshold",
                             "global_batch_size", "append_info", "exception_save", "health_ckpts_record_dir",
                             "save_optimizer", "checkpoint_name_or_path"))
            cfg.checkpoint_prefix = _checks.check_str(f"{path}.prefix", sec.get("prefix", "lora"))
            cfg.save_checkpoint_steps = _int(f"{path}.save_checkpoint_steps", sec.get("save_checkpoint_steps"),
                                             minimum=1, allow_none=True)
            cfg.keep_checkpoint_max = _int(f"{path}.keep_checkpoint_max", sec.get("keep_checkpoint_max", 3),
                                           minimum=1)
            fmt = sec.get("checkpoint_format", "ckpt")
            if fmt not in ("ckpt", "safetensors"):
                raise ValueError(f"{path}.checkpoint_format must be 'ckpt' or 'safetensors', got {_checks.describe(fmt)}")
            cfg.checkpoint_format = fmt
            directory = sec.get("directory")
            if directory is not None:
                cfg.checkpoint_dir = _checks.check_str(f"{path}.directory", directory)
        elif kind in _CALLBACKS_IGNORED:
            r.ignored.append(path)
        else:
            hint = _checks.closest(kind, _CALLBACKS_USED)
            if hint is not None:
                raise ValueError(f"{cfg.source}: callbacks[{i}]: unknown callback type '{kind}'; "
                                 f"did you mean '{hint}'?")
            r.ignored.append(path)


# ---- command-line flags -----------------------------------------------------------------------------
# flag -> dotted key of the run YAML it overrides (run_mindformer.py's names)
FLAG_KEYS = {
    "run_mode": "run_mode", "load_checkpoint": "load_checkpoint", "output_dir": "output_dir",
    "seed": "seed", "use_parallel": "use_parallel", "auto_trans_ckpt": "auto_trans_ckpt",
    "resume_training": "resume_training", "device_target": "context.device_target",
    "device_id": "context.device_id", "mode": "context.mode",
    "train_dataset_dir": "train_dataset.data_loader.dataset_dir",
    "eval_dataset_dir": "eval_dataset.data_loader.dataset_dir",
    "epochs": "runner_config.epochs", "batch_size": "runner_config.batch_size",
    "gradient_accumulation_steps": "runner_config.gradient_accumulation_steps",
    "sink_mode": "runner_config.sink_mode", "max_steps": "runner_config.max_steps",
}


def _resume_value(text):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def add_run_arguments(parser):
    """Add run_mindformer.py's flags (those this runner supports) to an argparse parser."""
    parser.add_argument("--config", required=True, help="run YAML (MindFormers format), e.g. "
                        "configs/tiny_llama/lora_cpu.yaml")
    parser.add_argument("--run_mode", default=None, help="finetune (or train: the same here)")
    parser.add_argument("--load_checkpoint", default=None,
                        help="base weights: a .ckpt / .safetensors file, or a directory of them")
    parser.add_argument("--train_dataset_dir", default=None, help="training MindRecord file (input_ids, labels)")
    parser.add_argument("--eval_dataset_dir", default=None, help="held-out MindRecord file, scored before "
                        "and after training")
    parser.add_argument("--use_parallel", default=None, type=str2bool,
                        help="True under msrun: data parallel over the workers")
    parser.add_argument("--output_dir", default=None, help="where checkpoints, logs and the loss curve go")
    parser.add_argument("--device_target", default=None, choices=DEVICE_TARGETS)
    parser.add_argument("--device_id", default=None, type=int)
    parser.add_argument("--mode", default=None, type=int, help="0 GRAPH_MODE (default), 1 PYNATIVE_MODE")
    parser.add_argument("--auto_trans_ckpt", default=None, type=str2bool,
                        help="accepted for compatibility: under data parallel every worker holds the whole "
                             "model, so there is nothing to reshard; a directory of rank_* checkpoints is "
                             "loaded only if rank_0 holds the complete model")
    parser.add_argument("--resume", "--resume_training", dest="resume_training", default=None, nargs="?",
                        const=True, type=_resume_value,
                        help="continue from the latest checkpoint in output_dir (or from the given "
                             "checkpoint directory / state file)")
    parser.add_argument("--seed", default=None, type=int)
    parser.add_argument("--max_steps", default=None, type=int,
                        help="stop after this many optimizer steps (the lr schedule keeps its length)")
    parser.add_argument("--epochs", default=None, type=int)
    parser.add_argument("--batch_size", default=None, type=int, help="per-worker batch size")
    parser.add_argument("--gradient_accumulation_steps", default=None, type=int)
    parser.add_argument("--sink_mode", default=None, type=str2bool, help="accepted; steps are fed from Python")
    parser.add_argument("--options", nargs="+", default=None, metavar="KEY=VALUE",
                        help="set any YAML key, e.g. --options lr_schedule.learning_rate=1e-3 "
                             "runner_wrapper.use_clip_grad=False (values read as YAML)")
    return parser


def overrides_from_args(args):
    """{dotted YAML key: value} for the flags given on the command line (None = not given)."""
    values = vars(args) if not isinstance(args, dict) else args
    return {FLAG_KEYS[k]: v for k, v in values.items() if k in FLAG_KEYS and v is not None}


def parse_extra_overrides(rest):
    """run_mindformer.py's trailing ``--section.key value`` (or ``--section.key=value``) pairs ->
    {dotted key: value}; values are read as YAML scalars (``1e-3``, ``True``, ``[1, 2]``)."""
    items = [part for item in rest for part in (item.split("=", 1) if item.startswith("--") else [item])]
    if len(items) % 2:
        raise ValueError(f"extra arguments must be '--section.key value' pairs, got {rest}")
    out = {}
    for key, value in zip(items[::2], items[1::2]):
        if not key.startswith("--") or len(key) < 3:
            raise ValueError(f"extra argument {key!r}: a config key must start with -- (e.g. "
                             "--lr_schedule.learning_rate 1e-3)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        out[key[2:]] = parsed
    return out


def load_run_config(args, extra=None):
    """RunConfig from parsed flags (``args.config`` plus overrides) and extra ``--a.b value`` pairs."""
    overrides = {}
    for item in getattr(args, "options", None) or []:
        if "=" not in item:
            raise ValueError(f"--options takes KEY=VALUE items, got {item!r}")
        overrides.update(parse_extra_overrides(["--" + item]))
    overrides.update(parse_extra_overrides(extra or []))
    overrides.update(overrides_from_args(args))
    return RunConfig.from_yaml(args.config, overrides)
