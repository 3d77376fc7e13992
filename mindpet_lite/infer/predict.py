"""Predict mode: prompts in, one JSON line per prompt out (``run_mode: predict``, MindFormers' flags).

    python -m mindpet_lite.run --config RUN.yaml --run_mode predict --predict_data "text" | FILE \\
        --load_checkpoint BASE --adapter ADAPTER [--adapter NAME=ADAPTER ...]

One straight line, each step a function: :func:`read_prompts` (``input_data`` / ``--predict_data``: the
text itself, or a file of prompts), :func:`load_predictor` (RunConfig -> the built model with its base
weights and adapter, the tokenizer, the generation settings of ``model_config``), :func:`predict_prompts`
(batches of ``predict_batch_size`` through ``models.generation.generate``) and :func:`predict` (the
whole run: writes ``<output_dir>/predictions.jsonl`` atomically, returns the records). Under msrun
(``--use_parallel True``) the prompts are sharded across the workers, rank ``r`` taking ``r::R``, and
rank 0 writes them back in input order (gathered through one file a rank in ``output_dir``):

    bash scripts/msrun_launcher.sh "python -m mindpet_lite.run --config RUN.yaml --run_mode predict \
        --predict_data FILE --load_checkpoint BASE --adapter ADAPTER --use_parallel True" 2

Generation settings come from ``model_config`` (MindFormers' keys): ``use_past``, ``do_sample``,
``top_k``, ``top_p``, ``temperature``, ``repetition_penalty``, ``max_decode_length`` (prompt + new
tokens, MindFormers' meaning) or ``max_new_tokens`` (wins when both are given), ``eos_token_id``
(default: the tokenizer's); the draws are seeded with the run's ``seed``. The tokenizer is the one
``processor.tokenizer.vocab_file`` names (a SentencePiece ``.model``), else the built-in byte tokenizer,
the one the demo data is made with. Prompts are encoded as the data converter encodes them: bos first.

Several adapters: ``--adapter PATH`` is the first ('default'), ``--adapter NAME=PATH`` (repeated) adds
named ones side by side (:func:`load_adapters`); a ``{"prompt": ..., "adapter": NAME}`` line of a
.jsonl picks its row's adapter (``"__base__"``: the base model; absent: 'default', else the first
NAME=PATH), the rows of one batch running different adapters in one forward (generate's
``adapter_names``).
"""
import contextlib
import glob
import json
import logging
import os
import time

import mindspore as ms

from mindpet_lite import _checks, _files
from mindpet_lite.adapters import load_adapter, lora_config, read_adapter
from mindpet_lite.adapters.peft import CONFIG_NAME as PEFT_CONFIG_NAME
from mindpet_lite.delta.lora_adapters import BASE_ROW, DEFAULT_ADAPTER
from mindpet_lite.data import load_tokenizer
from mindpet_lite.graph.adapters import running_adapter, unmixable_cells
from mindpet_lite.models.generation import generate
from mindpet_lite.pet import get_pet_model
from mindpet_lite.train.job import build_model, load_base_checkpoint
from mindpet_lite.train.cpu_threads import set_cpu_threads
from mindpet_lite.train.parallel import init_parallel, msrun_env

logger = logging.getLogger(__name__)

__all__ = ["read_prompts", "read_prompt_rows", "adapter_rows", "load_adapters", "generation_settings",
           "load_predictor", "predict_prompts", "predict",
           "stream_generate", "TextStreamer", "PREDICTIONS_FILE", "write_predictions"]

PREDICTIONS_FILE = "predictions.jsonl"
RANK_FILE = "predictions.rank_{rank}.json"  # under msrun: one rank's share, read by rank 0


def read_prompts(predict_data):
    """The prompts of ``input_data``: a list of strings as is; a path to an existing file -> one prompt
    a non-empty line (``.jsonl`` / ``.json``: a JSON string or a ``{"prompt": ...}`` object a line, or a
    JSON list of them); any other string is the prompt itself."""
    return read_prompt_rows(predict_data)[0]


def read_prompt_rows(predict_data):
    """``(prompts, adapters)``: the prompts as :func:`read_prompts` reads them, and each row's
    ``"adapter"`` field (a ``{"prompt", "adapter"}`` object of a .json / .jsonl file, or of a list;
    None where absent)."""
    if isinstance(predict_data, (list, tuple)):
        items = list(predict_data)
    elif isinstance(predict_data, str) and predict_data and os.path.isfile(predict_data):
        items = _prompts_in_file(predict_data)
    elif isinstance(predict_data, str) and predict_data:
        items = [predict_data]
    else:
        raise ValueError("input_data (--predict_data) must be the prompt text or a file of prompts, got "
                         f"{_checks.describe(predict_data)}")
    prompts, adapters = [], []
    for i, item in enumerate(items):
        adapter = None
        if isinstance(item, dict) and "prompt" in item:
            adapter = item.get("adapter")
            if adapter is not None and (not isinstance(adapter, str) or not adapter):
                raise TypeError(f"prompt {i} of input_data: adapter must be an adapter name (a non-empty "
                                f"string), got {_checks.describe(adapter)}")
            item = item["prompt"]
        if not isinstance(item, str) or not item:
            raise TypeError(f"prompt {i} of input_data must be a non-empty string, got {_checks.describe(item)}")
        prompts.append(item)
        adapters.append(adapter)
    if not prompts:
        raise ValueError(f"input_data {predict_data}: no prompt in the file")
    return prompts, adapters


def _prompts_in_file(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not path.endswith((".json", ".jsonl")):
        return [line for line in text.splitlines() if line.strip()]
    stripped = text.strip()
    return json.loads(stripped) if stripped.startswith("[") else \
        [json.loads(line) for line in stripped.splitlines() if line.strip()]


def adapter_rows(adapters, rows, what="prompt {i} of input_data"):
    """generate()'s ``adapter_names`` for prompts whose ``rows`` name their adapter (None where absent),
    with ``adapters`` the ``((name, path), ...)`` loaded; None when every row runs the active adapter
    and one adapter at most is loaded (one forward as before). An absent row runs the active adapter:
    'default' (a bare PATH), else the first NAME=PATH; ``"__base__"`` the base model. A name not
    loaded is a ValueError naming the row, raised before any work."""
    names = [name for name, _ in adapters]
    for i, name in enumerate(rows):
        if name is not None and name != BASE_ROW and name not in names:
            raise ValueError(f"{what.format(i=i)}: unknown adapter {name!r}; the adapters given (--adapter) "
                             f"are {names or 'none'} (or {BASE_ROW!r} for the base model)")
    if len(names) <= 1 and all(name is None for name in rows):
        return None
    active = DEFAULT_ADAPTER if DEFAULT_ADAPTER in names else (names[0] if names else BASE_ROW)
    return [active if name is None else name for name in rows]


def generation_settings(model_config, tokenizer, capacity, seed=0):
    """generate()'s keyword arguments from a ``model_config`` mapping (see the module docstring), checked
    with messages naming ``model_config.<key>``; ``max_decode_length`` is kept as ``max_length`` (the
    prompt + new tokens cap, resolved per batch), ``capacity`` the model's positions."""
    mc = model_config
    name = "model_config."
    out = {
        "do_sample": _checks.to_bool(name + "do_sample", mc.get("do_sample", False)),
        "top_k": _checks.check_int(name + "top_k", mc.get("top_k", 0), minimum=0),
        "top_p": _checks.check_number(name + "top_p", mc.get("top_p", 1.0), above=0, maximum=1),
        "temperature": _checks.check_number(name + "temperature", mc.get("temperature", 1.0), above=0),
        "repetition_penalty": _checks.check_number(name + "repetition_penalty", mc.get("repetition_penalty", 1.0),
                                                   above=0),
        "use_past": _checks.to_bool(name + "use_past", mc.get("use_past", False)),
        "seed": _checks.check_int("seed", seed, minimum=0),
    }
    eos = mc.get("eos_token_id")
    out["eos_token_id"] = tokenizer.eos_id if eos is None else eos
    pad = mc.get("pad_token_id")
    out["pad_token_id"] = tokenizer.pad_id if pad is None else pad
    new = mc.get("max_new_tokens")
    out["max_new_tokens"] = None if new is None else _checks.check_positive_int(name + "max_new_tokens", new)
    length = mc.get("max_decode_length")
    out["max_length"] = capacity if length is None else \
        min(_checks.check_int(name + "max_decode_length", length, minimum=2), capacity)
    return out


def tokenizer_spec(cfg):
    """processor.tokenizer.vocab_file of the run YAML, else 'byte'."""
    if not cfg.source or not os.path.isfile(cfg.source):
        return "byte"
    processor = _checks.load_mapping(cfg.source, "run config").get("processor")
    tok = processor.get("tokenizer") if isinstance(processor, dict) else None
    vocab = tok.get("vocab_file") if isinstance(tok, dict) else None
    return vocab if vocab else "byte"


def load_predictor(cfg, adapter=None, sharded=False):
    """(net, tokenizer, settings) for a RunConfig: the model it names with its base checkpoint, the
    adapters (``adapter``: a path, else ``cfg.adapters``; none: the base alone, see
    :func:`load_adapters`), in eval mode; the tokenizer; :func:`generation_settings`. ``sharded``:
    called by :func:`predict` after :func:`~mindpet_lite.train.parallel.init_parallel` (which set the
    device)."""
    if cfg.use_parallel and not sharded:
        raise NotImplementedError("generating one prompt runs in one process (use_parallel must be False, "
                                  "got True); run_mode predict shards its prompts across msrun workers")
    if cfg.backend != "builtin":
        raise NotImplementedError("run_mode predict needs the built-in Llama (model.arch.type LlamaForCausalLM "
                                  f"on CPU / without mindformers), got backend {cfg.backend!r}")
    adapters = ((DEFAULT_ADAPTER, adapter),) if adapter else cfg.adapters
    for name, path in adapters:
        _check_adapter_path(name, path)
    tokenizer = load_tokenizer(tokenizer_spec(cfg))
    ms.set_context(mode=ms.GRAPH_MODE if cfg.mode == 0 else ms.PYNATIVE_MODE)
    set_cpu_threads(cfg.runtime_num_threads)
    if not sharded:
        ms.set_device(cfg.device_target)
    ms.set_seed(cfg.seed)
    net = build_model(cfg)
    if net.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"model_config.vocab_size ({net.config.vocab_size}) is smaller than the tokenizer's "
                         f"({tokenizer.vocab_size})")
    settings = generation_settings(cfg.model_config, tokenizer, net.model.max_length, cfg.seed)
    load_base_checkpoint(net, cfg.load_checkpoint, cfg.auto_trans_ckpt)
    load_adapters(net, adapters, cfg.pet_config)
    net.set_train(False)
    return net, tokenizer, settings


def _check_adapter_path(name, path):
    what = "adapter" if name == DEFAULT_ADAPTER else f"adapter {name}"
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, PEFT_CONFIG_NAME)):
            raise NotADirectoryError(f"{what}: {path} is a directory without {PEFT_CONFIG_NAME} (want an adapter "
                                     "file or a HF PEFT directory)")
        return
    _files.check_input_file(path, what)


def load_adapters(net, adapters, pet_config=None):
    """Load ``((name, path), ...)`` onto a network with its base weights: 'default' first (a file with
    its pet_config builds its own LoRA cells, else ``pet_config``'s are applied first), then each named
    one in order (``load_adapter(..., adapter_name=)``: the first of them on a network without LoRA
    cells becomes the active adapter)."""
    ordered = sorted(adapters, key=lambda pair: pair[0] != DEFAULT_ADAPTER)
    for name, path in ordered:
        if name == DEFAULT_ADAPTER:
            if pet_config is not None and lora_config(read_adapter(path)[1]) is None:
                get_pet_model(net, pet_config)  # a file without its pet_config (e.g. MindFormers')
            load_adapter(net, path)
        else:
            load_adapter(net, path, adapter_name=name)
        logger.info("predict: adapter %s loaded from %s", name, path)
    return net


def _generate_args(settings, prompt_ids):
    """generate()'s keywords for one batch: each row's max_new_tokens from max_new_tokens / max_length
    (per row, so that a prompt gets the same tokens in any batch)."""
    args = {k: v for k, v in settings.items() if k not in ("max_new_tokens", "max_length")}
    budgets = []
    for ids in prompt_ids:
        room = settings["max_length"] - len(ids)
        if room < 1:
            raise ValueError(f"a prompt of {len(ids)} tokens leaves no room to generate (max_decode_length / "
                             f"the model's {settings['max_length']} positions)")
        new = settings["max_new_tokens"]
        budgets.append(room if new is None else min(new, room))
    args["max_new_tokens"] = budgets
    return args


def _new_tokens(sequence, prompt_len, eos_ids):
    new = sequence[prompt_len:]
    if new and new[-1] in eos_ids:
        new = new[:-1]
    return new


def predict_prompts(net, tokenizer, settings, prompts, batch_size=1, adapter_names=None):
    """One record a prompt, in input order: ``{"prompt", "output", "tokens", "seconds"}`` — the decoded
    new text (eos dropped), the new token ids, and the seconds of the batch the prompt was generated in;
    with ``adapter_names`` (one a prompt, as generate() takes them: rows of a batch may differ) also
    ``"adapter"``."""
    _checks.check_positive_int("predict_batch_size", batch_size)
    if adapter_names is not None and len(adapter_names) != len(prompts):
        raise ValueError(f"adapter_names must hold one name per prompt ({len(prompts)}), got {len(adapter_names)}")
    eos = settings["eos_token_id"]
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
    records = [None] * len(prompts)
    for group, name in _batch_groups(net, adapter_names, len(prompts)):
        with contextlib.nullcontext() if name is None else running_adapter(net, name):
            for start in range(0, len(group), batch_size):
                order = group[start:start + batch_size]
                ids = [tokenizer.encode(prompts[j], add_bos=True) for j in order]
                names = None if adapter_names is None else [adapter_names[j] for j in order]
                began = time.perf_counter()
                sequences = generate(net, ids, adapter_names=names, **_generate_args(settings, ids))
                seconds = round(time.perf_counter() - began, 4)
                for j, prompt_ids, seq in zip(order, ids, sequences):
                    new = _new_tokens(seq, len(prompt_ids), eos_ids)
                    records[j] = {"prompt": prompts[j], "output": tokenizer.decode(new), "tokens": new,
                                  "seconds": seconds}
                    if names is not None:
                        records[j]["adapter"] = adapter_names[j]
    return records


def _batch_groups(net, adapter_names, count):
    """``[(prompt indices, adapter or None)]``: every prompt in one group (batches may mix adapters),
    or, on a network that cannot mix rows (DoRA cells), one group an adapter in the order first named,
    run with that adapter active (a switch a group, not a batch: each switch recompiles)."""
    if adapter_names is None or not unmixable_cells(net):
        return [(list(range(count)), None)]
    groups = {}
    for j, name in enumerate(adapter_names):
        groups.setdefault(name, []).append(j)
    if len(groups) > 1:
        logger.info("predict: the network has DoRA cells, which cannot mix adapters in a batch: %d groups of "
                    "rows, one an adapter (%s)", len(groups), ", ".join(f"{n}: {len(g)}" for n, g in groups.items()))
    return [(group, name) for name, group in groups.items()]


def predict(cfg, prompts=None):
    """The predict run a RunConfig describes: ``prompts`` (else ``cfg.input_data``) -> records, written
    one JSON line each to ``<output_dir>/predictions.jsonl`` (atomically; an earlier file is replaced:
    the run owns its output_dir). Returns ``(records, path)``.

    Under msrun (``use_parallel: True``, see :mod:`mindpet_lite.train.parallel`) rank ``r`` of ``R``
    generates prompts ``r::R`` (in batches of ``predict_batch_size``) and writes them to
    ``<output_dir>/predictions.rank_<r>.json``; rank 0 waits for every rank's file, writes all records
    in input order to predictions.jsonl, removes the rank files and returns ``(records, path)``; the
    other ranks return their own share and their file. Greedy outputs equal the single-process ones
    (a prompt's tokens do not depend on its batch); with ``do_sample`` the draws depend on the batches.
    Stale rank files are removed before ``communication.init()``, which returns in no worker before
    every worker has called it, so a rank file rank 0 sees was written by this job.

    Several adapters (``cfg.adapters``: ``--adapter NAME=PATH`` repeated, a bare PATH is 'default')
    are loaded side by side; a prompt object's ``"adapter"`` field picks the one its row runs (rows
    of one batch may differ; :func:`adapter_rows` says what an absent field means), and each record
    then says which."""
    prompts, rows = read_prompt_rows(cfg.input_data if prompts is None else prompts)
    names = adapter_rows(cfg.adapters, rows)
    path = os.path.join(cfg.output_dir, PREDICTIONS_FILE)
    inputs = [p for p in (cfg.load_checkpoint, cfg.input_data, *(p for _, p in cfg.adapters)) if p]
    _files.check_new_output(path, inputs, overwrite=True, what="predictions")
    rank, size = 0, 1
    if cfg.use_parallel or msrun_env() is not None:  # use_parallel False under msrun: init_parallel says so
        for stale in glob.glob(os.path.join(cfg.output_dir, RANK_FILE.format(rank="*"))):
            os.remove(stale)
        rank, size = init_parallel(cfg.device_target, cfg.use_parallel, None, device_id=cfg.device_id)
        ms.reset_auto_parallel_context()  # inference graphs: no data-parallel gradient reduction to insert
    net, tokenizer, settings = load_predictor(cfg, sharded=cfg.use_parallel)
    indices = list(range(rank, len(prompts), size))
    records = predict_prompts(net, tokenizer, settings, [prompts[i] for i in indices], cfg.predict_batch_size,
                              None if names is None else [names[i] for i in indices])
    os.makedirs(cfg.output_dir, exist_ok=True)
    if size > 1:
        part = os.path.join(cfg.output_dir, RANK_FILE.format(rank=rank))
        with _files.atomic_write(part) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"rank": rank, "rank_size": size, "indices": indices, "records": records}, f,
                          ensure_ascii=False)
        if rank != 0:
            return records, part
        records = _gather_ranks(cfg.output_dir, size, len(prompts))
    return records, write_predictions(records, path)


def write_predictions(records, path):
    """One JSON line a record at ``path``, atomically (through ``_files``); makes the folder; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _files.atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _gather_ranks(folder, size, count, timeout=None, poll=0.2):
    """Rank 0: the records of every rank's file (waiting for them; ``timeout`` seconds, default msrun's
    cluster time-out or 7200), back in input order; the rank files are removed."""
    env = msrun_env()
    timeout = timeout or (env.topo_timeout if env and env.topo_timeout and env.topo_timeout > 0 else 7200)
    files = [os.path.join(folder, RANK_FILE.format(rank=r)) for r in range(size)]
    deadline = time.monotonic() + timeout
    while not all(os.path.isfile(f) for f in files):
        if time.monotonic() > deadline:
            missing = [r for r, f in enumerate(files) if not os.path.isfile(f)]
            raise TimeoutError(f"predict: rank(s) {missing} wrote no {RANK_FILE.format(rank='<r>')} in {folder} "
                               f"within {timeout} s (see their worker logs)")
        time.sleep(poll)
    records = [None] * count
    for r, name in enumerate(files):
        with open(name, encoding="utf-8") as f:
            part = json.load(f)
        if part["rank_size"] != size or part["indices"] != list(range(r, count, size)):
            raise ValueError(f"{name}: rank_size {part['rank_size']} / prompts {part['indices']} do not match "
                             f"rank {r} of {size} over {count} prompts (another job writing to {folder}?)")
        for i, record in zip(part["indices"], part["records"]):
            records[i] = record
    for name in files:
        os.remove(name)
    return records


def stream_generate(cfg, prompt, stream, max_new_tokens=None, adapter_name=None):
    """Generate one prompt with the model a RunConfig names (its adapters, if any; ``adapter_name``
    picks the one to run, ``"__base__"`` the base; default: the active one, see :func:`adapter_rows`),
    writing the new text to ``stream`` as it comes (:class:`TextStreamer`). Returns ``{"prompt_tokens", "new_tokens",
    "compile_seconds", "first_token_seconds", "prompt_tokens_per_s", "generation_tokens_per_s", "tokens",
    "output"}``: a two-token warm-up call of the same shape compiles the graphs first
    (``compile_seconds``, which includes that call), so the prompt rate (over the time to the first token)
    and the generation rate (over the tokens after it) are steady rates."""
    prompt = read_prompts([prompt])[0]
    names = adapter_rows(cfg.adapters, [adapter_name], "adapter_name")
    net, tokenizer, settings = load_predictor(cfg)
    if max_new_tokens is not None:
        settings["max_new_tokens"] = _checks.check_positive_int("max_new_tokens", max_new_tokens)
    ids = tokenizer.encode(prompt, add_bos=True)
    eos = settings["eos_token_id"]
    args = dict(_generate_args(settings, [ids]), adapter_names=names)
    began = time.perf_counter()  # compile the graphs of these shapes first: the rates are then steady
    try:
        generate(net, [ids], streamer=_StopAfter(2), **dict(args, eos_token_id=None))
    except _Stopped:
        pass
    compile_seconds = time.perf_counter() - began
    streamer = TextStreamer(tokenizer, stream, eos if isinstance(eos, (list, tuple)) else [eos])
    generate(net, [ids], streamer=streamer, **args)
    after_first = streamer.seconds - streamer.first_token_seconds
    return {"prompt_tokens": len(ids), "new_tokens": len(streamer.tokens), "compile_seconds": compile_seconds,
            "first_token_seconds": streamer.first_token_seconds,
            "prompt_tokens_per_s": len(ids) / streamer.first_token_seconds,
            "generation_tokens_per_s": (len(streamer.tokens) - 1) / after_first if after_first > 0 else 0.0,
            "tokens": streamer.tokens, "output": streamer.text}


class _Stopped(Exception):
    pass


class _StopAfter:
    """A streamer that ends a generate() call after ``count`` tokens (same shapes, fewer steps)."""

    def __init__(self, count):
        self.count = count

    def put(self, tokens):  # pylint: disable=unused-argument
        self.count -= 1
        if self.count <= 0:
            raise _Stopped()

    def end(self):
        pass


class TextStreamer:
    """A ``generate`` streamer for one row: writes the new text to ``stream`` as the tokens come (the
    whole new text is decoded each step and only what is new is written, so a multi-byte character
    split over tokens comes out whole), and times them: ``first_token_seconds`` (the prefill and the
    first choice), ``tokens``, ``seconds``."""

    def __init__(self, tokenizer, stream, eos_ids=()):
        self.tokenizer = tokenizer
        self.stream = stream
        self.eos_ids = set(eos_ids)
        self.tokens = []
        self.text = ""
        self.started = time.perf_counter()
        self.first_token_seconds = None
        self.seconds = None
        self.done = False

    def put(self, tokens):
        if self.first_token_seconds is None:
            self.first_token_seconds = time.perf_counter() - self.started
        token = int(tokens[0])
        if self.done:
            return
        self.tokens.append(token)
        if token in self.eos_ids:
            self.done = True
            return
        text = self.tokenizer.decode([t for t in self.tokens if t not in self.eos_ids])
        if text.endswith("\ufffd"):  # an incomplete character: wait for its next byte
            return
        self.stream.write(text[len(self.text):])
        self.stream.flush()
        self.text = text

    def end(self):
        self.seconds = time.perf_counter() - self.started
        text = self.tokenizer.decode([t for t in self.tokens if t not in self.eos_ids])
        self.stream.write(text[len(self.text):] + "\n")
        self.stream.flush()
        self.text = text
