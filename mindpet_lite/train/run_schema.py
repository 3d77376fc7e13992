"""The run YAML's schema: one table per section, read by everything that knows a key.

Each :class:`Key` states once what one YAML key is: its kind, default, allowed values, help text and,
for the keys run_mindformer.py has a flag for, the flag. Each :class:`Section` lists its keys, the keys
read by a parser of their own (sub-mappings, lists) and the keys MindFormers YAMLs carry that this
runner knowingly skips. From these tables ``run_config`` takes the parsing and the checks
(:meth:`Section.read`), the ignored-key report, the fields and defaults of its config classes
(:func:`config_fields`) and the command-line flags (:func:`flag_keys`).

Reading rules shared by every key: an absent key or a YAML null is the default; a path given as ''
is the default; a number written ``1e-5`` (which YAML 1.1 reads as a string) is a number; a bool may be
written as the text true / false in any case.
"""
import dataclasses
import os
from typing import Any, Optional

from mindpet_lite import _checks
from mindpet_lite.delta.lora_adapters import DEFAULT_ADAPTER, check_adapter_name

KINDS = ("int", "float", "bool", "str", "path", "choice", "str_list", "bool_or_path", "adapters")
_ANNOTATIONS = {"int": int, "float": float, "bool": bool, "str": str, "path": str, "str_list": tuple,
                "bool_or_path": Any, "adapters": tuple}
_FLAG_TYPES = {"int": int, "float": float, "bool": _checks.bool_arg, "str": str, "path": str, "bool_or_path": str,
               "adapters": str}

# Optimizer names MindFormers YAMLs use -> what runs here (all are AdamW with decoupled decay).
OPTIMIZER_TYPES = {
    "AdamWeightDecay": "AdamWeightDecay", "AdamW": "AdamWeightDecay", "adamw": "AdamWeightDecay",
    "FusedAdamWeightDecay": "AdamWeightDecay", "FP32StateAdamWeightDecay": "AdamWeightDecay",
    "FP32StateAdamW": "AdamWeightDecay",
}
LR_TYPES = {"CosineWithWarmUpLR": "cosine", "cosine": "cosine", "ConstantWarmUpLR": "constant",
            "constant": "constant"}
RUN_MODES = ("finetune", "train", "predict")
DEVICE_TARGETS = ("CPU", "Ascend", "GPU")


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of a section of the run YAML."""
    name: str                       # the YAML key
    kind: str                       # one of KINDS
    default: Any                    # the value when the key is absent or null (None: not set)
    help: str
    minimum: Any = None             # numbers: inclusive bounds ...
    maximum: Any = None
    above: Any = None               # ... and exclusive ones
    below: Any = None
    choices: Any = None             # choice: the allowed values, or {YAML value: value used}
    note: str = ""                  # choice: what the values mean, shown in the error
    unset_at_most: Optional[int] = None  # int: a value <= this means "not set" (the default)
    flag: Optional[str] = None      # the command-line flag (without --) that overrides the key
    flag_aliases: tuple = ()        # other spellings of the flag, listed first in --help
    attr: Optional[str] = None      # the config attribute it fills, when not `name`
    field: bool = True              # False: read and checked, used by the parser, not an attribute
    yaml_attr: Optional[str] = None  # choice with a mapping: attribute that keeps the YAML spelling

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Key {self.name}: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def target(self):
        """The name under which the value is returned and stored."""
        return self.attr or self.name

    def read(self, where, raw):
        """The checked value of this key of section ``where`` (YAML spelling for a choice)."""
        name = f"{where}.{self.name}" if where else self.name
        if raw is None or (self.kind in ("path", "adapters") and raw == ""):
            return self.default
        value = getattr(self, "_read_" + self.kind)(name, raw)
        if self.unset_at_most is not None and value <= self.unset_at_most:
            return self.default
        return value

    def used_value(self, yaml_value):
        """What the runner uses for a YAML value (a choice mapping translates it)."""
        return self.choices[yaml_value] if isinstance(self.choices, dict) else yaml_value

    # ---- one reader per kind -------------------------------------------------------------------
    def _bounds(self):
        return dict(minimum=self.minimum, maximum=self.maximum, above=self.above, below=self.below)

    def _read_int(self, name, raw):
        return _checks.check_int(name, raw, **self._bounds())

    def _read_float(self, name, raw):
        if isinstance(raw, str) and _checks.reads_as_float(raw):
            raw = float(raw)
        return float(_checks.check_number(name, raw, **self._bounds()))

    def _read_bool(self, name, raw):
        return _checks.to_bool(name, raw)

    def _read_str(self, name, raw):
        return _checks.check_str(name, raw)

    def _read_path(self, name, raw):
        if not isinstance(raw, str):
            raise TypeError(f"{name} must be a path string, got {_checks.describe(raw)}")
        return raw

    def _read_choice(self, name, raw):
        return _checks.check_choice(name, raw, self.choices, self.note)

    def _read_str_list(self, name, raw):
        return tuple(_checks.check_str_list(name, raw))

    def _read_adapters(self, name, raw):
        """``((adapter name, path), ...)`` from ``PATH`` (the first adapter, "default"), ``NAME=PATH``, a
        list of them, or a mapping {NAME: PATH}; names checked, each given once."""
        if isinstance(raw, dict):
            entries = [f"{key}={value}" if isinstance(key, str) and isinstance(value, str) else (key, value)
                       for key, value in raw.items()]
        else:
            entries = [raw] if isinstance(raw, str) else raw
        if not isinstance(entries, (list, tuple)):
            raise TypeError(f"{name} must be PATH, NAME=PATH, a list of them or a mapping NAME: PATH, got "
                            f"{_checks.describe(raw)}")
        pairs = {}
        for entry in entries:
            adapter, path = adapter_entry(name, entry)
            if adapter in pairs:
                raise ValueError(f"{name}: adapter name {adapter!r} is given twice ({pairs[adapter]} and {path}): "
                                 "give each adapter its own NAME=PATH (a bare PATH is 'default')")
            pairs[adapter] = path
        return tuple(pairs.items())

    def _read_bool_or_path(self, name, raw):
        try:
            return _checks.to_bool(name, raw)
        except TypeError:
            pass
        if not isinstance(raw, str) or not raw:
            raise TypeError(f"{name} must be a bool or the path of a checkpoint directory / state file, "
                            f"got {_checks.describe(raw)}")
        return raw


def adapter_entry(name, entry):
    """``(adapter name, path)`` of one ``adapter`` entry: ``NAME=PATH`` (a letter, then letters, digits or
    '_'; ``default=PATH`` is the first adapter), else a bare ``PATH`` (the first adapter, "default"). An
    existing path holding '=' is a bare path."""
    if not isinstance(entry, str) or not entry:
        raise TypeError(f"{name} entries must be non-empty strings PATH or NAME=PATH, got {_checks.describe(entry)}")
    if "=" not in entry or os.path.exists(entry):
        return DEFAULT_ADAPTER, entry
    adapter, path = entry.split("=", 1)
    if not path:
        raise ValueError(f"{name}: {entry!r} has no path after '=' (want NAME=PATH, or a bare PATH)")
    if adapter == DEFAULT_ADAPTER:
        return adapter, path
    try:
        return check_adapter_name(adapter), path
    except ValueError as err:
        raise ValueError(f"{name}: {entry!r}: the adapter name {adapter!r} must be a letter followed by up to 63 "
                         "letters, digits or '_' (want NAME=PATH, or a bare PATH)") from err


@dataclasses.dataclass(frozen=True)
class Section:
    """A mapping of the run YAML: the keys read from its table, the keys read by a parser of their
    own (``parsed_apart``), and the MindFormers keys this runner knowingly skips (``ignored``)."""
    path: str                       # dotted path in the YAML; '' for the top level
    keys: tuple
    ignored: tuple = ()
    parsed_apart: tuple = ()

    @property
    def valid(self):
        return tuple(k.name for k in self.keys) + self.parsed_apart

    def key(self, name):
        return next(k for k in self.keys if k.name == name)

    def read(self, mapping, ignored, source="", where=None):
        """``{target: value}`` of every key of the table (defaults for the absent ones), checked.

        ``mapping`` None reads as empty; ``where`` names the section in messages (default: its path);
        skipped keys are appended to ``ignored`` as dotted paths; a key close to a valid one is a
        ValueError naming it (``source``, the YAML file, prefixes that message).
        """
        where = self.path if where is None else where
        label = ": ".join(filter(None, (source, where)))
        used, skipped = _checks.split_known_keys(label or "run config", {} if mapping is None else mapping,
                                                 self.valid, known_ignored=self.ignored)
        ignored.extend(f"{where}.{key}" if where else str(key) for key in skipped)
        values = {}
        for key in self.keys:
            yaml_value = key.read(where, used.get(key.name))
            values[key.target] = key.used_value(yaml_value)
            if key.yaml_attr:
                values[key.yaml_attr] = yaml_value
        return values


def config_fields(*sections, only=None):
    """``(name, type, dataclasses.field)`` of the keys of ``sections`` that are config attributes,
    in table order, a choice's ``yaml_attr`` after them: the fields of ``make_dataclass``."""
    fields, yaml_fields = [], []
    for section in sections:
        for key in section.keys:
            if not key.field or (only is not None and key.target not in only):
                continue
            default = key.used_value(key.default)
            kind = type(default) if key.kind == "choice" else _ANNOTATIONS[key.kind]
            fields.append((key.target, Optional[kind] if default is None else kind,
                           dataclasses.field(default=default, metadata={"yaml": _dotted(section.path, key.name),
                                                                        "help": key.help})))
            if key.yaml_attr:
                yaml_fields.append((key.yaml_attr, str, dataclasses.field(
                    default=key.default, metadata={"yaml": _dotted(section.path, key.name),
                                                   "help": "the YAML spelling of " + key.target})))
    names = [name for name, _, _ in fields + yaml_fields]
    if len(names) != len(set(names)):
        raise ValueError(f"config fields named twice: {sorted(n for n in names if names.count(n) > 1)}")
    return fields + yaml_fields


def _dotted(path, name):
    return f"{path}.{name}" if path else name


# ---- the tables ------------------------------------------------------------------------------------
TOP = Section("", keys=(
    Key("run_mode", "choice", "finetune", "finetune or train (the same here), or predict (generate from "
        "input_data with the base and the adapter)", choices=RUN_MODES,
        note="(finetune and train train; predict generates; eval is a MindFormers run mode this runner does "
             "not provide: held-out scoring runs with eval_dataset during training)",
        flag="run_mode"),
    Key("input_data", "str", None, "predict: the prompt text, or a file of prompts (one a line; .jsonl: a "
        "string or a {'prompt': ...} object a line)", flag="predict_data"),
    Key("predict_batch_size", "int", 1, "predict: prompts generated together (right-padded)", minimum=1,
        flag="predict_batch_size"),
    Key("adapter", "adapters", (), "predict: the adapter to load onto the base, PATH (a file or a PEFT "
        "directory: the first adapter, 'default'); NAME=PATH for named ones, the flag repeated (a YAML list or "
        "mapping); not set: the base alone", flag="adapter", attr="adapters"),
    Key("load_checkpoint", "path", "", "base weights: a .ckpt / .safetensors file, or a directory of them",
        flag="load_checkpoint"),
    Key("output_dir", "str", "./output", "where checkpoints, logs, the loss curve and summary.json go",
        flag="output_dir"),
    Key("use_parallel", "bool", False, "True under msrun: data parallel over the workers", flag="use_parallel"),
    Key("auto_trans_ckpt", "bool", False,
        "accepted for compatibility: under data parallel every worker holds the whole model, so there is "
        "nothing to reshard; a directory of rank_* checkpoints is loaded only if rank_0 holds the whole model",
        flag="auto_trans_ckpt"),
    Key("resume_training", "bool_or_path", False,
        "continue from the latest checkpoint in output_dir (True), or from the given checkpoint directory / "
        "state file", flag="resume_training", flag_aliases=("resume",), attr="resume"),
    Key("seed", "int", 0, "seed of MindSpore, numpy and the data shuffle", minimum=0, flag="seed"),
    Key("predict_after_train", "bool", False, "after training, rank 0 answers every eval_dataset prompt "
        "greedily (generate; KV cache with model_config.use_past), prints three and writes "
        "<output_dir>/predictions.jsonl"),
    Key("do_eval", "bool", False, "score eval_dataset during training too (it is always scored before and "
        "after training when set)"),
    Key("eval_step_interval", "int", 100, "with do_eval: score every this many optimizer steps; <= 0 turns "
        "this rule off (MindFormers' default)"),
    Key("eval_epoch_interval", "int", 50, "with do_eval and no step interval: score every this many epochs; "
        "<= 0 turns this rule off (MindFormers' default)"),
), parsed_apart=("runner_config", "optimizer", "lr_schedule", "train_dataset", "eval_dataset", "parallel",
                 "parallel_config", "callbacks", "context", "model", "runner_wrapper", "recompute_config"),
   ignored=("trainer", "src_strategy_path_or_dir", "only_save_strategy", "train_dataset_task",
            "eval_dataset_task", "micro_batch_interleave_num", "processor", "metric", "eval_callbacks",
            "auto_tune", "filepath_prefix", "autotune_per_step", "profile", "profile_start_step",
            "profile_stop_step", "init_start_profile", "profile_communication", "profile_memory",
            "layer_scale", "layer_decay", "lr_scale", "lr_scale_factor", "remote_save_url", "moe_config",
            "transform_process_num", "load_ckpt_format", "load_ckpt_async", "use_legacy", "swap_config",
            "monitor_config", "tensorboard", "ignore_data_skip", "data_skip_steps", "use_ckpt_load_balancing",
            "check_for_nan_in_loss_and_grad", "adapter_id",
            "infer_precision_sync", "postprocess_use_numpy", "context_parallel", "print_separate_loss",
            "resume_by_meta", "skip_trans_ckpt", "save_file", "remove_redundancy", "train_precision_sync"))

RUNNER = Section("runner_config", keys=(
    Key("epochs", "int", 1, "passes over the training data", minimum=1, flag="epochs"),
    Key("batch_size", "int", None, "per-worker batch size; wins over train_dataset.batch_size (as in "
        "MindFormers); neither given: 1", minimum=1, flag="batch_size", field=False,
        attr="runner_batch_size"),
    Key("sink_mode", "bool", False, "accepted; steps are fed from Python", flag="sink_mode"),
    Key("sink_size", "int", 1, "accepted; steps are fed from Python", minimum=-1),
    Key("gradient_accumulation_steps", "int", 1, "micro-batches per optimizer step", minimum=1,
        flag="gradient_accumulation_steps"),
    Key("max_steps", "int", None, "stop after this many optimizer steps (the lr schedule keeps its length, "
        "so an interrupted run and a resumed one follow the same curve); not set: no limit", minimum=1,
        flag="max_steps"),
), ignored=("initial_epoch", "initial_step", "per_epoch_size", "stop_step", "num_samples"))

OPTIMIZER = Section("optimizer", keys=(
    Key("type", "choice", "AdamWeightDecay", "optimizer name; MindFormers' AdamW variants all run as "
        "MindSpore's nn.AdamWeightDecay", choices=OPTIMIZER_TYPES, note="(all run as AdamWeightDecay)",
        yaml_attr="yaml_type"),
    Key("beta1", "float", 0.9, "first-moment decay (optimizer.betas: [beta1, beta2] is also read)",
        minimum=0.0, below=1.0),
    Key("beta2", "float", 0.999, "second-moment decay", minimum=0.0, below=1.0),
    Key("eps", "float", 1e-8, "added to the denominator", above=0.0),
    Key("weight_decay", "float", 0.0, "decoupled weight decay", minimum=0.0),
    Key("learning_rate", "float", None, "the lr when lr_schedule.learning_rate is not given", above=0.0,
        field=False),
), parsed_apart=("betas",), ignored=("use_fused", "loss_scale", "amsgrad", "maximize", "swap"))

LR_SCHEDULE = Section("lr_schedule", keys=(
    Key("type", "choice", "CosineWithWarmUpLR", "warmup then cosine decay to lr_end, or constant; no "
        "lr_schedule section: constant at optimizer.learning_rate", choices=LR_TYPES, yaml_attr="yaml_type"),
    Key("learning_rate", "float", None, "peak lr (else optimizer.learning_rate; one of them is needed)",
        above=0.0),
    Key("warmup_ratio", "float", 0.0, "warmup length as a share of the schedule", minimum=0.0, maximum=1.0),
    Key("warmup_steps", "int", None, "warmup length in optimizer steps; wins over warmup_ratio", minimum=0),
    Key("warmup_lr_init", "float", 0.0, "lr at the start of the warmup", minimum=0.0),
    Key("lr_end", "float", 0.0, "lr at the end of the cosine decay", minimum=0.0),
    Key("total_steps", "int", None, "schedule length in optimizer steps; 0 or less (MindFormers' -1): the "
        "whole run, epochs x steps per epoch", unset_at_most=0),
), ignored=("decay_steps", "decay_ratio", "min_lr", "warmup_epochs", "num_cycles", "power", "end_learning_rate"))


def dataset_sections(name, train):
    """(dataset, data_loader) sections of ``train_dataset`` (train=True) or ``eval_dataset``: the eval
    set defaults to no shuffle and keeps its last partial batch."""
    loader = Section(f"{name}.data_loader", keys=(
        Key("type", "choice", "MindDataset", "the dataset class", choices=("MindDataset",),
            note="(a .mindrecord file with input_ids and labels; convert JSON with `mindpet-lite data`)",
            field=False),
        Key("dataset_dir", "path", "", ("training" if train else "held-out (scored before and after training)")
            + " MindRecord file (input_ids, labels)", flag=f"{name}_dir"),
        Key("shuffle", "bool", train, "shuffle the rows every epoch"),
    ), ignored=("num_samples", "shard_id", "num_shards", "columns_list", "shuffle_buffer_size", "file_format",
                "data_files", "path", "sampler", "num_parallel_workers", "split"))
    dataset = Section(name, keys=(
        Key("input_columns", "str_list", ("input_ids", "labels"), "columns read from the MindRecord file"),
        Key("batch_size", "int", None, "batch size when runner_config.batch_size is not set" if train
            else "batch size for scoring (default: the training batch size)", minimum=1),
        Key("drop_remainder", "bool", train, "drop the last partial batch"),
        Key("num_parallel_workers", "int", 1, "threads of the data pipeline", minimum=1),
    ), parsed_apart=("data_loader",),
       ignored=("output_columns", "python_multiprocessing", "numa_enable", "prefetch_size", "repeat",
                "construct_args_key", "pad_token_id", "divisor", "remainder", "eod_reset", "tokenizer", "seed",
                "column_names", "type", "dynamic_batch", "pad_to_max_length", "max_length", "text_transforms",
                "auto_tune", "filepath_prefix", "autotune_per_step", "profile", "create_compressed_eod_mask",
                "compressed_eod_mask_length", "input_columns_rename"))
    return dataset, loader


TRAIN_DATASET, TRAIN_LOADER = dataset_sections("train_dataset", train=True)
EVAL_DATASET, EVAL_LOADER = dataset_sections("eval_dataset", train=False)

_MUST_BE_1 = ("must be 1 under use_parallel: this runner trains data parallel only (and on CPU MindSpore's "
              "semi-auto parallel does not run)")
PARALLEL = Section("parallel", keys=(
    Key("parallel_mode", "choice", 0, "accepted: 0 and 1 (semi-auto with model_parallel = pipeline_stage = 1) "
        "are data parallel here", choices=(0, 1, 2, 3), note="(0 data, 1 semi-auto, 2 auto, 3 hybrid)"),
    Key("gradients_mean", "bool", None, "checked only: the loss (and gradient) of a step is always the mean "
        "over the global batch's label tokens", field=False),
    Key("full_batch", "bool", None, "checked only: each worker reads its own shard", field=False),
), ignored=("enable_alltoall", "search_mode", "enable_parallel_optimizer", "strategy_ckpt_config",
            "parallel_optimizer_config", "strategy_ckpt_save_file", "strategy_ckpt_load_file", "pipeline_config",
            "dataset_strategy", "loss_repeated_mean", "device_num", "enable_fold_pipeline"))

PARALLEL_CONFIG = Section("parallel_config", keys=(
    Key("data_parallel", "int", 1, "under use_parallel: must equal the number of msrun workers", minimum=1),
    Key("model_parallel", "int", 1, _MUST_BE_1, minimum=1, field=False),
    Key("pipeline_stage", "int", 1, _MUST_BE_1, minimum=1, field=False),
    Key("context_parallel", "int", 1, _MUST_BE_1, minimum=1, field=False),
    Key("expert_parallel", "int", 1, _MUST_BE_1, minimum=1, field=False),
), ignored=("use_seq_parallel", "micro_batch_num", "vocab_emb_dp", "gradient_aggregation_group",
            "optimizer_shard", "recompute", "context_parallel_algo", "ulysses_degree_in_cp", "mem_coeff",
            "select_recompute", "seq_split_num"))

CONTEXT = Section("context", keys=(
    Key("mode", "choice", 0, "0 GRAPH_MODE, 1 PYNATIVE_MODE", choices={0: 0, 1: 1, "GRAPH_MODE": 0,
                                                                        "PYNATIVE_MODE": 1},
        note="(0 GRAPH_MODE, 1 PYNATIVE_MODE)", flag="mode"),
    Key("device_target", "choice", "CPU", "the device MindSpore runs on", choices=DEVICE_TARGETS,
        flag="device_target"),
    Key("device_id", "int", None, "device index on Ascend / GPU without msrun (not set: MindSpore's "
        "default, 0); under msrun each worker takes msrun's DEVICE_ID, and a different value here gets a "
        "warning", minimum=0, flag="device_id"),
    Key("max_device_memory", "str", None, "device memory MindSpore may use, e.g. '59GB' (not on CPU)"),
    Key("max_call_depth", "int", None, "MindSpore's recursion limit for graph compilation", minimum=1),
    Key("runtime_num_threads", "int", None, "threads of MindSpore's CPU kernel pool, set once per process "
        "(not set: MindSpore's default, 25 whatever the machine; on the 2-core demo machine 2 and 25 train "
        "alike, 1 is 1.4x slower)", minimum=1),
), ignored=("save_graphs", "save_graphs_path", "jit_config", "memory_optimize_level", "mempool_block_size",
            "enable_graph_kernel", "graph_kernel_flags", "ascend_config",
            "affinity_cpu_list", "deterministic", "jit_level", "infer_boost", "enable_compile_cache",
            "compile_cache_path", "affinity_config", "pynative_synchronize"))

RECOMPUTE = Section("recompute_config", keys=(
    Key("recompute", "bool", False, "recompute each decoder layer's activations in the backward (built-in "
        "Llama): less memory for more compute"),
), ignored=("select_recompute", "select_comm_recompute", "parallel_optimizer_comm_recompute",
            "mp_comm_recompute", "recompute_slice_activation", "select_recompute_exclude",
            "select_comm_recompute_exclude"))

MODEL = Section("model", keys=(), parsed_apart=("model_config", "arch"))
ARCH = Section("model.arch", keys=(
    Key("type", "str", "LlamaForCausalLM", "the model class: LlamaForCausalLM is built in; other MindFormers "
        "classes need device_target Ascend with mindformers installed", attr="arch_type"),
))

WRAPPER = Section("runner_wrapper", keys=(
    Key("type", "str", "MFTrainOneStepCell", "accepted: the step cell here does what MFTrainOneStepCell does"),
    Key("scale_sense", "float", 1.0, "a fixed loss scale; a mapping (runner_wrapper.scale_sense.*) "
        "describes a loss-scale cell instead", above=0.0),
    Key("use_clip_grad", "bool", False, "clip the gradients' global norm to max_grad_norm"),
    Key("max_grad_norm", "float", 1.0, "the clipping norm (MindFormers' MFTrainOneStepCell default)", above=0.0),
), ignored=("local_norm", "calculate_per_token_loss", "use_skip_data_by_global_norm", "global_norm_spike_threshold",
            "use_grad_norm_warmup", "enable_global_norm"))

SCALE_SENSE = Section("runner_wrapper.scale_sense", keys=(
    Key("type", "choice", "DynamicLossScaleUpdateCell", "a dynamic or a fixed loss scale",
        choices={"DynamicLossScaleUpdateCell": True, "FixedLossScaleUpdateCell": False},
        attr="dynamic_loss_scale"),
    Key("loss_scale_value", "float", 65536.0, "the (initial) loss scale", above=0.0, attr="scale_sense"),
    Key("scale_factor", "float", 2.0, "dynamic: the scale is divided by it on overflow, multiplied after "
        "scale_window good steps", above=1.0),
    Key("scale_window", "int", 1000, "dynamic: good steps before the scale grows", minimum=1),
))

LOSS_MONITOR = Section("callbacks[MFLossMonitor]", keys=(
    Key("per_print_times", "int", 1, "log the loss every this many optimizer steps", minimum=1, attr="log_every"),
), parsed_apart=("type",),
   ignored=("learning_rate", "micro_batch_num", "origin_epochs", "dataset_size", "initial_epoch", "initial_step",
            "global_batch_size", "gradient_accumulation_steps", "check_for_nan_in_loss_and_grad"))

CHECKPOINT_MONITOR = Section("callbacks[CheckpointMonitor]", keys=(
    Key("prefix", "str", "lora", "file name prefix of the adapter checkpoints", attr="checkpoint_prefix"),
    Key("save_checkpoint_steps", "int", None, "save the adapter every this many optimizer steps (not set: "
        "only at the end)", minimum=1),
    Key("keep_checkpoint_max", "int", 3, "keep the last this many step checkpoints", minimum=1),
    Key("directory", "path", None, "where step checkpoints go (default: output_dir/checkpoint)",
        attr="checkpoint_dir"),
    Key("checkpoint_format", "choice", "ckpt", "file format of the adapter checkpoints",
        choices=("ckpt", "safetensors")),
), parsed_apart=("type",),
   ignored=("integrated_save", "async_save", "save_network_params", "save_trainable_params", "remove_redundancy",
            "save_checkpoint_seconds", "keep_checkpoint_per_n_minutes", "save_last_step",
            "embedding_local_norm_threshold", "global_batch_size", "append_info", "exception_save",
            "health_ckpts_record_dir", "save_optimizer", "checkpoint_name_or_path"))

CALLBACKS = {"MFLossMonitor": LOSS_MONITOR, "CheckpointMonitor": CHECKPOINT_MONITOR}
CALLBACKS_IGNORED = ("ObsMonitor", "SummaryMonitor", "ProfileMonitor", "EvalCallBack", "TrainingStateMonitor",
                     "StressDetectCallBack", "TopkBiasBalanceCallback", "MoEDropRateCallback",
                     "ColdHotExpertMonitor", "TrainFaultTolerance", "LossMonitor", "TimeMonitor")

# Sections whose keys are attributes of RunConfig itself (the others fill their own config class).
RUN_CONFIG_SECTIONS = (TOP, RUNNER, PARALLEL, PARALLEL_CONFIG, CONTEXT, RECOMPUTE, ARCH, LOSS_MONITOR,
                       CHECKPOINT_MONITOR)
# Every table, in the order of the command-line flags in --help.
ALL_SECTIONS = (TOP, TRAIN_DATASET, TRAIN_LOADER, EVAL_DATASET, EVAL_LOADER, CONTEXT, RUNNER, OPTIMIZER,
                LR_SCHEDULE, PARALLEL, PARALLEL_CONFIG, RECOMPUTE, MODEL, ARCH, WRAPPER, SCALE_SENSE,
                LOSS_MONITOR, CHECKPOINT_MONITOR)


def flag_keys():
    """``[(key, dotted YAML path)]`` of the keys that have a command-line flag, in --help order."""
    return [(key, _dotted(section.path, key.name)) for section in ALL_SECTIONS for key in section.keys
            if key.flag]


def flag_type(key):
    """argparse ``type=`` of a key's flag: a choice takes the type of its default."""
    return type(key.default) if key.kind == "choice" else _FLAG_TYPES[key.kind]
