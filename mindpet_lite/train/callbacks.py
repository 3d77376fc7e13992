"""Training callbacks: the progress line, the loss history (CSV + PNG), adapter checkpoints, resume.

A callback is an object with any of ``on_train_begin(state)``, ``on_step_end(state)`` and
``on_train_end(state)``; ``state`` is the trainer's :class:`~mindpet_lite.train.loop.TrainState`
(step, total_steps, loss, lr, history, rank_id, rank_size, net, ...). Under data parallel only rank 0
prints, writes the loss history and writes checkpoints.

Checkpoint layout (``<output_dir>/checkpoint``, one triple per saved step ``N``)::

    <prefix>_step<N>.ckpt | .safetensors   the adapter (mindpet_lite.adapters.save_adapter)
    <prefix>_step<N>.state.ckpt             optimizer moments, global step, loss scale
    <prefix>_step<N>.json                   step, data position, lr schedule, loss history, file names

Each file is written to a temporary name and renamed; the JSON is written last, so a step counts as
saved only when its JSON exists, and :func:`find_latest_checkpoint` never picks a half-written one.
Only the last ``keep_checkpoint_max`` triples are kept.
"""
import glob
import json
import logging
import math
import os
import re
import time

from mindpet_lite import _files
from mindpet_lite.adapters import save_adapter

logger = logging.getLogger(__name__)

__all__ = ["say", "eval_line", "summary_line", "ProgressLogger", "PeriodicEval", "LossHistory", "AdapterCheckpoint", "find_latest_checkpoint", "read_resume_state",
           "format_duration"]

_STEP_RE = re.compile(r"_step(\d+)\.json$")


def format_duration(seconds):
    """``h:mm:ss`` for a number of seconds."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def say(text):
    """Progress output for the user (stdout, flushed so msrun's per-worker logs stay current)."""
    print(text, flush=True)


_say = say


def eval_line(label, metrics):
    """``<label>: loss 1.2345 (ppl 3.44) | answer-token accuracy 56.7% | exact match 12.0% (50 rows)``."""
    return (f"{label}: loss {metrics['loss']:.4f} (ppl {math.exp(min(metrics['loss'], 50)):.2f}) | "
            f"answer-token accuracy {100 * metrics['token_accuracy']:.1f}% | "
            f"exact match {100 * metrics['exact_match']:.1f}% ({metrics['rows']} rows)")


def summary_line(summary):
    """The closing line of a run."""
    parts = [f"done: {summary['steps']} steps in {format_duration(summary['train_seconds'])} "
             f"(wall {format_duration(summary['wall_seconds'])})",
             f"trainable {summary['trainable_percent']:.3f}%"]
    before, after = summary.get("eval_before"), summary.get("eval_after")
    if before and after:
        parts.append(f"held-out loss {before['loss']:.4f} -> {after['loss']:.4f}, exact match "
                     f"{100 * before['exact_match']:.1f}% -> {100 * after['exact_match']:.1f}%")
    parts.append(f"adapter {summary['adapter']}")
    return " | ".join(parts)


class ProgressLogger:
    """Every ``every`` steps (and at the last step) rank 0 prints step/total, loss, lr, tokens/s, ETA.

    The global batch is the rows of one optimizer step: batch_size x workers x accumulation steps.
    tokens/s counts the input tokens of all workers (global batch x seq_length) over
    the time since the previous line; the ETA uses the mean step time after the first step (which
    includes graph compilation).
    """

    def __init__(self, every=1):
        self.every = max(1, int(every))
        self._last_time = None
        self._last_step = None
        self._first_end = None
        self._first_step = None

    def on_train_begin(self, state):
        self._last_time = time.perf_counter()
        self._last_step = state.step
        if state.rank_id == 0:
            _say(f"training: steps {state.step + 1}..{state.stop_step} of {state.total_steps}, "
                 f"global batch {state.global_batch} x {state.seq_length} tokens, "
                 f"{state.rank_size} worker(s)")

    def on_step_end(self, state):
        now = time.perf_counter()
        if self._first_end is None:
            self._first_end, self._first_step = now, state.step
        if state.step % self.every and state.step != state.stop_step:
            return
        steps = state.step - self._last_step
        elapsed = now - self._last_time
        tok_s = state.tokens_per_step * steps / elapsed if elapsed > 0 else 0.0
        self._last_time, self._last_step = now, state.step
        if state.step > self._first_step:
            per_step = (now - self._first_end) / (state.step - self._first_step)
        else:
            per_step = elapsed / max(steps, 1)
        eta = per_step * (state.stop_step - state.step)
        if state.rank_id == 0:
            width = len(str(state.total_steps))
            _say(f"step {state.step:>{width}}/{state.total_steps} | loss {state.loss:.4f} | lr {state.lr:.3e} | "
                 f"{tok_s:,.0f} tokens/s | elapsed {format_duration(state.elapsed)} | ETA {format_duration(eta)}")


class PeriodicEval:
    """Every ``every`` optimizer steps (rank 0, not at the last step, which the runner scores anyway):
    ``score_fn(label)``, which evaluates, logs and appends to ``state.evals`` (plotted with the loss)."""

    def __init__(self, score_fn, every):
        self.score_fn = score_fn
        self.every = every

    def on_step_end(self, state):
        if state.rank_id != 0 or state.step % self.every or state.step >= state.stop_step:
            return
        self.score_fn(f"eval at step {state.step}")


class LossHistory:
    """At the end (rank 0): ``loss.csv`` (step, loss, lr, elapsed_s) and ``loss.png`` (needs matplotlib;
    skipped with a warning without it). A resumed run's history starts with the steps before the resume."""

    def __init__(self, output_dir, plot=True):
        self.output_dir = output_dir
        self.plot = plot
        self.csv_path = os.path.join(output_dir, "loss.csv")
        self.png_path = os.path.join(output_dir, "loss.png")

    def on_train_end(self, state):
        if state.rank_id != 0:
            return
        write_loss_csv(self.csv_path, state.history)
        if self.plot:
            plot_loss(self.png_path, state.history, state.evals)


def write_loss_csv(path, history):
    """Write the loss history (list of dicts with step, loss, lr, elapsed_s) atomically."""
    rows = [[r["step"], f"{r['loss']:.6f}", f"{r['lr']:.6e}", f"{r['elapsed_s']:.3f}"] for r in history]
    _files.write_csv(path, ["step", "loss", "lr", "elapsed_s"], rows)
    logger.info("loss history: %s (%d steps)", path, len(history))


def plot_loss(path, history, evals=None):
    """A PNG of the training loss per step (and held-out loss points, if any). Returns the path or None."""
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    except ImportError:
        logger.warning("matplotlib is not installed: %s not written (pip install matplotlib)", path)
        return None
    if not history:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], lw=1.2, label="train loss")
    points = [(e["step"], e["loss"]) for e in (evals or []) if e.get("loss") is not None]
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], "o", color="tab:red", label="held-out loss")
    values = [r["loss"] for r in history] + [p[1] for p in points]
    if min(values) > 0 and max(values) / min(values) > 50:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with _files.atomic_write(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    logger.info("loss plot: %s", path)
    return path


class AdapterCheckpoint:
    """Adapter + resume state every ``every`` steps and at the end, on rank 0; keeps the last ``keep``."""

    def __init__(self, directory, every=None, keep=3, prefix="lora", fmt="ckpt"):
        if fmt not in ("ckpt", "safetensors"):
            raise ValueError(f"checkpoint format must be 'ckpt' or 'safetensors', got {fmt!r}")
        self.directory = directory
        self.every = every
        self.keep = max(1, int(keep))
        self.prefix = prefix
        self.fmt = fmt
        self.last_saved = None

    def on_step_end(self, state):
        if self.every and state.step % self.every == 0 and state.step != state.stop_step:
            self.save(state)

    def on_train_end(self, state):
        if self.last_saved != state.step and state.step > 0:
            self.save(state)

    def save(self, state):
        """Write the triple for ``state.step`` (rank 0 only) and prune old ones."""
        self.last_saved = state.step
        if state.rank_id != 0:
            return None
        os.makedirs(self.directory, exist_ok=True)
        stem = os.path.join(self.directory, f"{self.prefix}_step{state.step:06d}")
        adapter = f"{stem}.{self.fmt}"
        save_adapter(state.net, adapter, config=state.pet_config, overwrite=True)  # the run owns its folder
        tensors, meta = state.trainer.state_dict()
        state_file = f"{stem}.state.ckpt"
        _files.write_checkpoint(tensors, state_file)
        meta.update({"adapter": os.path.basename(adapter), "state": os.path.basename(state_file),
                     "saved_at": time.strftime("%Y-%m-%d %H:%M:%S")})
        _files.write_json(f"{stem}.json", meta)
        _say(f"checkpoint: step {state.step} -> {adapter}")
        self._prune()
        return f"{stem}.json"

    def _prune(self):
        saved = sorted(_saved_steps(self.directory, self.prefix))
        for step in saved[:-self.keep]:
            stem = os.path.join(self.directory, f"{self.prefix}_step{step:06d}")
            # the JSON first: a step without its JSON is not a checkpoint any more
            for path in (f"{stem}.json", f"{stem}.ckpt", f"{stem}.safetensors", f"{stem}.state.ckpt"):
                if os.path.exists(path):
                    os.remove(path)


def _saved_steps(directory, prefix=None):
    pattern = os.path.join(directory, f"{prefix or '*'}_step*.json")
    steps = []
    for path in glob.glob(pattern):
        match = _STEP_RE.search(path)
        if match:
            steps.append(int(match.group(1)))
    return steps


def find_latest_checkpoint(path):
    """The JSON of the latest complete checkpoint under ``path``.

    ``path`` may be the output_dir (its ``checkpoint`` folder is searched), a checkpoint folder, or a
    ``*_step<N>.json`` file. Raises FileNotFoundError naming what was searched.
    """
    if os.path.isfile(path):
        if not path.endswith(".json"):
            raise ValueError(f"resume: expected a checkpoint folder or its <prefix>_step<N>.json, got {path}")
        return path
    candidates = [path, os.path.join(path, "checkpoint")]
    for folder in candidates:
        found = []
        for json_path in glob.glob(os.path.join(folder, "*_step*.json")):
            match = _STEP_RE.search(json_path)
            if match:
                found.append((int(match.group(1)), json_path))
        if found:
            return max(found)[1]
    raise FileNotFoundError(f"resume: no checkpoint (*_step<N>.json) found in {path} or {os.path.join(path, 'checkpoint')}")


def read_resume_state(json_path):
    """(metadata dict, adapter path, state file path) of a checkpoint JSON, checking the files exist."""
    try:
        with open(json_path, encoding="utf-8") as f:
            meta = json.load(f)
    except ValueError as err:
        raise ValueError(f"resume: {json_path} is not valid JSON ({err}): a damaged checkpoint record") from err
    wanted = ("step", "adapter", "state")
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), (int, str)) for k in wanted):
        raise ValueError(f"resume: {json_path} must be a JSON object with {', '.join(wanted)} (a checkpoint "
                         "record this runner wrote)")
    folder = os.path.dirname(os.path.abspath(json_path))
    adapter = os.path.join(folder, meta["adapter"])
    state_file = os.path.join(folder, meta["state"])
    for path in (adapter, state_file):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"resume: {json_path} names {path}, which is missing")
    return meta, adapter, state_file
