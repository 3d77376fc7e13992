"""RunConfig: a MindFormers run YAML (the one `run_mindformer.py --config` takes), read and checked once.

An existing MindFormers LoRA YAML (``configs/llama2/lora_llama2_7b.yaml``) is accepted as it is:

* keys the runner uses are validated (type, range, allowed names) as the tables of
  :mod:`mindpet_lite.train.run_schema` say: one table per section gives each key's type, default,
  range or choices, help text and flag, and drives the parsing, the checks, the ignored-key report,
  the fields of the config classes and the command-line flags;
* keys it does not use (``processor``, ``metric``, ``trainer``, a data loader's
  ``numa_enable``, ...) are collected in ``RunConfig.ignored_keys`` and logged once, in one line;
* an unknown key in a section the runner uses that is close to a key it uses (``lerning_rate``) is a
  ``ValueError`` naming the key it probably meant.

Command-line flags (run_mindformer.py's names, built from the tables by :func:`add_run_arguments`;
``python -m mindpet_lite.run --help`` lists them) override the YAML:
``RunConfig.from_yaml(path, overrides)`` applies them to the raw mapping before anything is checked,
so a flag is validated exactly like the YAML key it replaces.

What the parallel keys mean on this backend: training is always data parallel (DATA_PARALLEL; the
loss of a step is the mean over the label tokens of the whole global batch, see train/step.py). ``parallel.parallel_mode``
0 or 1 is accepted (semi-auto with ``model_parallel = pipeline_stage = 1`` is data parallel);
``model_parallel`` / ``pipeline_stage`` / ``context_parallel`` / ``expert_parallel`` other than 1 are
errors under ``use_parallel`` (on CPU because MindSpore's semi-auto parallel does not run there, on
Ascend because this runner does not set it up: the message says which); ``parallel_config.data_parallel`` must equal the number of msrun workers.
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
import copy
import dataclasses
import importlib.util
import logging
import os
from typing import Any, Optional

import yaml

from mindpet_lite import _checks
from mindpet_lite.models.llama_config import LlamaConfig
from mindpet_lite.pet.config import load_pet_config
from mindpet_lite.train import run_schema as schema

logger = logging.getLogger(__name__)

# measured on MindSpore 2.9.0 (CPU, under msrun after communication.init(), and without it) when a graph
# with a shard() strategy compiles under parallel_mode semi_auto_parallel
_SEMI_AUTO_ON_CPU = ("MindSpore 2.9 raises \"RuntimeError: Invalid communication backend: CPU for "
                     "semi_auto_parallel/auto_parallel mode, currently only support Ascend/GPU backend.\" "
                     "when it compiles such a graph")

__all__ = ["RunConfig", "OptimizerConfig", "LrScheduleConfig", "DatasetConfig", "WrapperConfig",
           "add_run_arguments", "overrides_from_args", "load_run_config", "parse_extra_overrides",
           "MINDFORMERS_ARCHS"]

# model.arch.type values that are MindFormers model classes; LlamaForCausalLM is also the built-in.
MINDFORMERS_ARCHS = frozenset({"LlamaForCausalLM", "LlamaForCausalLMForCustom", "ParallelLlamaForCausalLM",
                               "Qwen2ForCausalLM", "BaichuanForCausalLM", "GLMForCausalLM",
                               "ChatGLM2ForConditionalGeneration", "TelechatForCausalLM",
                               "InternLMForCausalLM", "MixtralForCausalLM", "DeepseekV3ForCausalLM"})
BUILTIN_ARCHS = frozenset({"LlamaForCausalLM"})


# ---- config classes: their fields and defaults come from the tables ------------------------------
def _fields_doc(fields):
    """Docstring lines naming each field's YAML key and what it does (the tables' help text)."""
    lines = [f"    {field_name} ({f.metadata['yaml']}): {f.metadata['help']}"
             for field_name, _, f in fields if f.metadata]
    return "\n\nFields read from the run YAML (run_schema's tables):\n" + "\n".join(lines)


def _config_class(name, doc, fields):
    """A dataclass of `fields` whose docstring lists each field's YAML key and help text."""
    return dataclasses.make_dataclass(name, fields, namespace={"__doc__": doc + _fields_doc(fields),
                                                               "__module__": __name__})


OptimizerConfig = _config_class(
    "OptimizerConfig", "AdamW with decoupled weight decay (MindSpore's ``nn.AdamWeightDecay``).",
    schema.config_fields(schema.OPTIMIZER))
LrScheduleConfig = _config_class(
    "LrScheduleConfig", "Warmup then cosine decay to ``lr_end`` (``cosine``) or constant (``constant``).\n\n"
    "``warmup_steps`` wins over ``warmup_ratio`` (of the schedule length); ``total_steps`` None means the "
    "whole run (epochs x optimizer steps per epoch). Values: ``train.schedule.lr_at``.",
    schema.config_fields(schema.LR_SCHEDULE))
DatasetConfig = _config_class(
    "DatasetConfig", "A MindRecord file with int ``input_ids`` and ``labels`` rows of ``seq_length + 1`` tokens.",
    schema.config_fields(schema.TRAIN_LOADER, schema.TRAIN_DATASET))
WrapperConfig = _config_class(
    "WrapperConfig", "The train step: loss scaling, gradient clipping (MindFormers' ``runner_wrapper``).",
    schema.config_fields(schema.WRAPPER)
    + [("dynamic_loss_scale", bool, dataclasses.field(default=False, metadata={
        "yaml": "runner_wrapper.scale_sense.type", "help": "a loss-scale cell that adapts the scale (only "
        "when scale_sense is a mapping; a number is a fixed scale)"}))]
    + schema.config_fields(schema.SCALE_SENSE, only=("scale_factor", "scale_window")))
_RUN_FIELDS = schema.config_fields(*schema.RUN_CONFIG_SECTIONS)
_RunSettings = _config_class("_RunSettings", "The RunConfig attributes read straight from a table.", _RUN_FIELDS)


@dataclasses.dataclass
class RunConfig(_RunSettings):
    """Everything the runner needs, validated. Build with :meth:`from_yaml` or :meth:`from_dict`.

    The attributes declared here are put together by the parser; those read straight from a YAML key
    (``seed``, ``epochs``, ``device_target``, ...) come from run_schema's tables, listed below.
    """
    batch_size: int = 1                      # per worker: runner_config.batch_size, else train_dataset's
    optimizer: Any = dataclasses.field(default_factory=OptimizerConfig)
    lr_schedule: Any = dataclasses.field(default_factory=LrScheduleConfig)
    train_dataset: Any = dataclasses.field(default_factory=DatasetConfig)
    eval_dataset: Optional[Any] = None       # a DatasetConfig when eval_dataset names a file
    model_config: dict = dataclasses.field(default_factory=dict)
    backend: str = "builtin"                 # 'builtin' or 'mindformers'
    llama_config: Any = None                 # models.llama_config.LlamaConfig for the built-in model
    pet_config: Any = None                   # pet.config.LoraConfig
    wrapper: Any = dataclasses.field(default_factory=WrapperConfig)
    ignored_keys: list = dataclasses.field(default_factory=list)
    source: str = "<dict>"

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path, overrides=None):
        """Read a MindFormers run YAML, apply flag `overrides` (see :func:`overrides_from_args`), check."""
        data = _checks.load_mapping(path, "run config")
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
        return _Parser(source).parse(data)

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
                "do_eval": self.do_eval, "predict_after_train": self.predict_after_train,
                "backend": self.backend, "pet_config": self.pet_config.to_dict() if self.pet_config else None}


RunConfig.__doc__ = RunConfig.__doc__.rstrip() + _fields_doc(_RUN_FIELDS)


def _set_dotted(data, key, value):
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _make(config_class, values):
    """An instance of a config class from a section's values (checked-only keys are left out)."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in values.items() if k in names})


def _assign(config, values):
    """Set the attributes of `config` that a section's values hold."""
    names = {f.name for f in dataclasses.fields(config)}
    for name, value in values.items():
        if name in names:
            setattr(config, name, value)


# ---- parsing: the tables do the keys; the code below does what spans keys -------------------------
class _Parser:
    """Reads a run mapping into a RunConfig, collecting the ignored keys on the way."""

    def __init__(self, source):
        self.source = source
        self.cfg = RunConfig(source=source)

    def read(self, section, mapping, where=None):
        return section.read(mapping, self.cfg.ignored_keys, self.source, where)

    def parse(self, data):
        cfg = self.cfg
        _assign(cfg, self.read(schema.TOP, data))
        runner = self.read(schema.RUNNER, data.get("runner_config"))
        _assign(cfg, runner)
        _assign(cfg, self.read(schema.PARALLEL, data.get("parallel")))
        parallel_config = self.read(schema.PARALLEL_CONFIG, data.get("parallel_config"))
        _assign(cfg, parallel_config)
        _assign(cfg, self.read(schema.CONTEXT, data.get("context")))
        _assign(cfg, self._recompute(data.get("recompute_config")))

        cfg.optimizer, optimizer_lr = self._optimizer(data.get("optimizer"))
        cfg.lr_schedule = self._lr_schedule(data.get("lr_schedule"), optimizer_lr)
        cfg.train_dataset = self._dataset("train_dataset", data.get("train_dataset"))
        self._batch_size(runner["runner_batch_size"])
        if data.get("eval_dataset") is not None:
            evaluation = self._dataset("eval_dataset", data.get("eval_dataset"))
            cfg.eval_dataset = evaluation if evaluation.dataset_dir else None
        self._check_eval()
        self._check_data_parallel_only(parallel_config)
        self._model(data.get("model"))
        cfg.wrapper = self._wrapper(data.get("runner_wrapper"))
        self._callbacks(data.get("callbacks"))
        return cfg

    def _recompute(self, data):
        if isinstance(data, dict) and isinstance(data.get("recompute"), (list, tuple)):
            raise ValueError("recompute_config.recompute must be True or False here (a list of layer counts per "
                             f"pipeline stage needs pipeline parallel, which this runner does not do), got "
                             f"{_checks.describe(data['recompute'])}")
        return self.read(schema.RECOMPUTE, data)

    def _optimizer(self, data):
        """(OptimizerConfig, optimizer.learning_rate or None); ``betas: [b1, b2]`` gives beta1 / beta2
        unless those are given too."""
        if isinstance(data, dict) and "betas" in data:
            betas = data["betas"]
            if not isinstance(betas, (list, tuple)) or len(betas) != 2:
                raise TypeError(f"optimizer.betas must be a list of two numbers, got {_checks.describe(betas)}")
            data = {"beta1": betas[0], "beta2": betas[1], **{k: v for k, v in data.items() if k != "betas"}}
        values = self.read(schema.OPTIMIZER, data)
        return _make(OptimizerConfig, values), values["learning_rate"]

    def _lr_schedule(self, data, optimizer_lr):
        # no lr_schedule section: a constant lr, optimizer.learning_rate
        values = self.read(schema.LR_SCHEDULE, data or {"type": "constant"})
        if values["learning_rate"] is None:
            if optimizer_lr is None:
                raise ValueError("lr_schedule.learning_rate (or optimizer.learning_rate) is missing")
            values["learning_rate"] = optimizer_lr
        return _make(LrScheduleConfig, values)

    def _dataset(self, name, data):
        train = name == "train_dataset"
        dataset, loader = (schema.TRAIN_DATASET, schema.TRAIN_LOADER) if train else \
            (schema.EVAL_DATASET, schema.EVAL_LOADER)
        values = self.read(dataset, data)
        values.update(self.read(loader, (data or {}).get("data_loader")))
        if train and not {"input_ids", "labels"} <= set(values["input_columns"]):
            raise ValueError(f"{name}.input_columns must hold 'input_ids' and 'labels' (fine-tuning trains on the "
                             f"labels, prompt tokens masked with -100), got {list(values['input_columns'])}")
        return _make(DatasetConfig, values)

    def _batch_size(self, runner_batch):
        """runner_config.batch_size wins over train_dataset.batch_size, as in MindFormers."""
        cfg, dataset_batch = self.cfg, self.cfg.train_dataset.batch_size
        if runner_batch and dataset_batch and runner_batch != dataset_batch:
            logger.info("runner_config.batch_size=%d wins over train_dataset.batch_size=%d (as in MindFormers)",
                        runner_batch, dataset_batch)
        if runner_batch or dataset_batch:
            cfg.batch_size = runner_batch or dataset_batch

    def _check_eval(self):
        cfg = self.cfg
        if cfg.do_eval and cfg.eval_dataset is None:
            raise ValueError("do_eval is True but eval_dataset.data_loader.dataset_dir is not set "
                             "(set it, or pass --eval_dataset_dir)")
        if cfg.predict_after_train and cfg.eval_dataset is None:
            raise ValueError("predict_after_train is True but eval_dataset.data_loader.dataset_dir is not set: "
                             "the held-out prompts come from it (set it, or pass --eval_dataset_dir)")
        if cfg.do_eval and cfg.eval_step_interval <= 0 and cfg.eval_epoch_interval <= 0:
            raise ValueError(f"do_eval is True but eval_step_interval ({cfg.eval_step_interval}) and "
                             f"eval_epoch_interval ({cfg.eval_epoch_interval}) are both <= 0: set one > 0")

    def _check_data_parallel_only(self, parallel_config):
        if not self.cfg.use_parallel:
            return
        for key in ("model_parallel", "pipeline_stage", "context_parallel", "expert_parallel"):
            value = parallel_config[key]
            if value == 1:
                continue
            if self.cfg.device_target == "CPU" and key in ("model_parallel", "pipeline_stage"):
                raise ValueError(f"parallel_config.{key} must be 1 with device_target CPU, got {value}: model and "
                                 f"pipeline parallel need MindSpore's semi-auto parallel, which the CPU backend does "
                                 f"not run ({_SEMI_AUTO_ON_CPU}); train data parallel (parallel_config.data_parallel "
                                 "= the number of workers) or on Ascend")
            raise ValueError(f"parallel_config.{key} must be 1, got {value}: this runner trains data parallel only "
                             "(it sets DATA_PARALLEL and every worker holds the whole model; it does not set up "
                             "semi-auto parallel nor split the model across devices); for model / pipeline "
                             "parallel on Ascend run the same YAML with MindFormers' run_mindformer.py")

    def _model(self, data):
        cfg = self.cfg
        if data is None:
            raise ValueError(f"{cfg.source}: the 'model' section is missing (model.model_config with pet_config, "
                             "model.arch.type)")
        self.read(schema.MODEL, data)
        model_config = data.get("model_config")
        if not isinstance(model_config, dict):
            raise ValueError(f"model.model_config must be a mapping, got {_checks.describe(model_config)}")
        _assign(cfg, self.read(schema.ARCH, data.get("arch")))
        cfg.model_config = dict(model_config)

        pet = model_config.get("pet_config")
        if pet is None:
            raise ValueError("model.model_config.pet_config is missing: this runner fine-tunes with LoRA "
                             "(pet_type: lora, lora_rank, lora_alpha, lora_dropout, target_modules)")
        cfg.pet_config = load_pet_config(pet, section="model.model_config.pet_config")

        use_mf = (cfg.arch_type in MINDFORMERS_ARCHS and cfg.device_target == "Ascend"
                  and importlib.util.find_spec("mindformers") is not None)
        cfg.backend = "mindformers" if use_mf else "builtin"
        if cfg.backend == "builtin" and cfg.arch_type not in BUILTIN_ARCHS:
            raise ValueError(f"model.arch.type {cfg.arch_type!r}: the built-in model is LlamaForCausalLM; other "
                             "MindFormers classes need device_target Ascend with mindformers installed")
        if cfg.arch_type in BUILTIN_ARCHS:
            body = {k: v for k, v in model_config.items() if k != "pet_config"}
            cfg.llama_config = LlamaConfig.from_dict(body, section=f"{cfg.source}: model.model_config")
            cfg.ignored_keys.extend(f"model.model_config.{k}" for k in cfg.llama_config.ignored_keys if k != "type")

    def _wrapper(self, data):
        """scale_sense is a number (a fixed scale) or a mapping describing a loss-scale cell."""
        scale = data.get("scale_sense") if isinstance(data, dict) else None
        if isinstance(scale, dict):
            data = {k: v for k, v in data.items() if k != "scale_sense"}
        values = self.read(schema.WRAPPER, data)
        if isinstance(scale, dict):
            values.update(self.read(schema.SCALE_SENSE, scale))
        return _make(WrapperConfig, values)

    def _callbacks(self, data):
        """A list of mappings with a 'type': the tables read MFLossMonitor and CheckpointMonitor."""
        cfg = self.cfg
        if data is None:
            return
        if not isinstance(data, list):
            raise TypeError(f"callbacks must be a list of mappings with a 'type', got {_checks.describe(data)}")
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "type" not in item:
                raise TypeError(f"callbacks[{i}] must be a mapping with a 'type', got {_checks.describe(item)}")
            kind = item["type"]
            where = f"callbacks[{i}]({kind})"
            section = schema.CALLBACKS.get(kind)
            if section is not None:
                _assign(cfg, self.read(section, item, where))
                continue
            hint = None if kind in schema.CALLBACKS_IGNORED else _checks.closest(kind, schema.CALLBACKS)
            if hint is not None:
                raise ValueError(f"{cfg.source}: callbacks[{i}]: unknown callback type '{kind}'; "
                                 f"did you mean '{hint}'?")
            cfg.ignored_keys.append(where)


# ---- command-line flags: one per table key that has a flag ----------------------------------------
# flag (argparse dest) -> dotted key of the run YAML it overrides (run_mindformer.py's names)
FLAG_KEYS = {key.flag: path for key, path in schema.flag_keys()}


def _flag_help(key, path):
    default = "not set" if key.default is None else repr(key.default)
    return f"{key.help} (YAML {path}; default {default})".replace("%", "%%")


def add_run_arguments(parser):
    """Add run_mindformer.py's flags (those this runner supports) to an argparse parser: ``--config``,
    one flag for each key of the run_schema tables that has one, and ``--options``."""
    parser.add_argument("--config", required=True, help="run YAML (MindFormers format), e.g. "
                        "configs/tiny_llama/lora_cpu.yaml")
    for key, path in schema.flag_keys():
        kwargs = {"dest": key.flag, "default": None, "type": schema.flag_type(key), "help": _flag_help(key, path)}
        if key.kind == "choice":
            kwargs["choices"] = [c for c in key.choices if isinstance(c, kwargs["type"])]
        if key.kind == "bool":
            kwargs["metavar"] = "{True,False}"
        if key.kind == "bool_or_path":  # the flag alone means True
            kwargs.update(nargs="?", const=True)
        parser.add_argument(*(f"--{name}" for name in (*key.flag_aliases, key.flag)), **kwargs)
    parser.add_argument("--options", nargs="+", default=None, metavar="KEY=VALUE",
                        help="set any YAML key, e.g. --options lr_schedule.learning_rate=1e-3 "
                             "runner_wrapper.use_clip_grad=False (values read as YAML)")
    return parser


def overrides_from_args(args):
    """{dotted YAML key: value} for the flags given on the command line (None = not given)."""
    values = vars(args) if not isinstance(args, dict) else args
    return {FLAG_KEYS[k]: v for k, v in values.items() if k in FLAG_KEYS and v is not None}


def _flag_hint(name):
    """'; did you mean ...' for an unknown flag: the section key of that name, else the closest flag."""
    name = name.replace("-", "_")
    flags = {k.flag for k, _ in schema.flag_keys()}
    if name in flags:
        return f"; did you mean --{name}?"
    for section in schema.ALL_SECTIONS:
        if section.path and name in section.valid:
            if section.path.startswith("callbacks["):
                return f"; {name} is a key of the YAML's callbacks list ({section.path[len('callbacks['):-1]})"
            return f"; did you mean --{section.path}.{name}?"
    hint = _checks.closest(name, sorted(flags | set(schema.TOP.valid) | {"config", "options"}))
    return f"; did you mean --{hint}?" if hint else ""


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
        name = key[2:]
        if "." not in name and name not in schema.TOP.valid:
            raise ValueError(f"unknown flag {key}{_flag_hint(name)} (the flags are listed by --help; any other YAML "
                             "key is set as --section.key value, e.g. --lr_schedule.learning_rate 1e-3)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        out[name] = parsed
    return out


def load_run_config(args, extra=None):
    """RunConfig from parsed flags (``args.config`` plus overrides) and extra ``--a.b value`` pairs."""
    overrides = {}
    for item in getattr(args, "options", None) or []:
        if "=" not in item:
            raise ValueError(f"--options takes KEY=VALUE items, got {item!r}")
        overrides.update(parse_extra_overrides(["--" + item]))
    overrides.update(parse_extra_overrides(extra or []))
    typed = set(overrides)  # keys set as --section.key / --options: they must be keys the runner uses
    overrides.update(overrides_from_args(args))
    cfg = RunConfig.from_yaml(args.config, overrides)
    unused = sorted(k for k in typed for skipped in cfg.ignored_keys if k == skipped or k.startswith(skipped + "."))
    if unused:
        raise ValueError(f"--{unused[0]} is set on the command line but this runner does not use that key "
                         f"(unused keys: {', '.join(unused)}); check its spelling and section")
    return cfg
