"""generate(): autoregressive decoding for the package's causal LMs, with or without a KV cache.

The model supplies four methods (``models.llama.LlamaForCausalLM`` has them): ``new_cache(batch,
length)``, ``prefill(input_ids, last_index, caches)``, ``decode(input_ids, positions, caches)`` and
``logits_at(input_ids, index)``; this module runs them through three graph cells of its own, chooses
the tokens on the host and streams them.

Layout choices (for speed on the CPU this package targets, and for exactness):

* **Right padding, per-row positions.** Prompts of different lengths are written left-aligned into one
  ``[B, P]`` block (``P`` the longest prompt). The prefill is then the model's plain causal forward:
  a pad token sits after every real token of its row, so the causal mask alone keeps it out of the
  real tokens' attention, no extra mask or position shift is needed, and each row's logits are those
  of the prompt run alone. Each row then decodes at its own position (its length so far): the token
  writes its key / value into that row of the cache, overwriting the pad garbage the prefill left
  there, and attends to rows ``0..position``. Left padding would need a per-row padding mask in the
  prefill and shifted rotary positions (or exactness lost to them); with right padding the decode's
  mask is one comparison of the cache rows with the positions.
* **Static-shape cache, as graph inputs and outputs.** One tuple ``(k0, v0, k1, v1, ...)`` of
  ``[B, n_kv_heads, L, head_dim]`` (``L`` the longest prompt + its new tokens), allocated once a call. Keys and values are stored
  per KV head (grouped-query heads are never repeated in the cache) with the sequence axis before
  ``head_dim``, so a decode step is two batched matmuls over contiguous rows. The prefill graph sees
  ``[B, P]``, the decode graph ``[B, 1]``: both shapes are fixed for the whole call, so each compiles
  once (MindSpore keeps them for later calls of the same shapes) and no token recompiles anything.
  The cache is passed functionally (a ``mutable`` tuple, so its values are graph inputs, not constants) rather than held in Parameters so that the batch size and length
  can change between calls without rebuilding the model.
* **Tokens chosen on the host**: the ``[B, vocab]`` logits come back each step anyway; repetition
  penalty, temperature, top-k / top-p and the seeded draw (a numpy ``Generator``) are a few
  microseconds of numpy there and keep the graphs free of sampling state.

``use_past=False`` (the default of ``model_config.use_past``) recomputes the whole right-padded
``[B, L]`` sequence each token through a third graph, also compiled once: the
reference the cache is measured against (benchmarks/bench_generate.py).
"""
import contextlib
import logging
import weakref

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn

from mindpet_lite import _checks
from mindpet_lite.graph.adapters import adapter_rows, running_adapter, unmixable_cells

logger = logging.getLogger(__name__)

__all__ = ["generate"]


class _Prefill(nn.Cell):
    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, input_ids, last_index, caches, rows=None):
        return self.net.prefill(input_ids, last_index, caches, rows)


class _Decode(nn.Cell):
    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, input_ids, positions, caches, rows=None):
        return self.net.decode(input_ids, positions, caches, rows)


class _Full(nn.Cell):
    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, input_ids, index, rows=None):
        return self.net.logits_at(input_ids, index, rows)


_CELLS = weakref.WeakKeyDictionary()


def graph_cells(net):
    """The ``(prefill, decode, full)`` graph cells ``generate`` runs ``net`` through (one set per
    network, kept for its life: their compiled graphs are reused by later calls of the same shapes)."""
    cells = _CELLS.get(net)
    if cells is None:
        cells = (_Prefill(net), _Decode(net), _Full(net))
        for cell in cells:
            cell.set_train(False)
        _CELLS[net] = cells
    return cells


# ------------------------------------------------------------------------------------------------
# argument checks
# ------------------------------------------------------------------------------------------------
def _token(name, value, vocab):
    return _checks.check_int(name, value, minimum=0, below=vocab)


def _prompts(input_ids, vocab):
    """input_ids -> list of int lists: one prompt (ints), several (lists of ints, any lengths), or a
    2-D array / Tensor of equal-length prompts."""
    if isinstance(input_ids, Tensor):
        input_ids = input_ids.asnumpy()
    if isinstance(input_ids, np.ndarray):
        if input_ids.ndim not in (1, 2) or not np.issubdtype(input_ids.dtype, np.integer):
            raise TypeError(f"input_ids must be a 1-D or 2-D integer array, got {input_ids.ndim}-D "
                            f"{input_ids.dtype}")
        input_ids = input_ids.tolist()
    allowed = "a list of token ids or a list of such lists (one per prompt)"
    if not isinstance(input_ids, (list, tuple)) or not input_ids:
        raise TypeError(f"input_ids must be {allowed}, non-empty, got {_checks.describe(input_ids)}")
    rows = [input_ids] if all(_checks.is_int(t) for t in input_ids) else list(input_ids)
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple, np.ndarray)) or len(row) == 0:
            raise TypeError(f"input_ids[{i}] must be a non-empty list of token ids, got {_checks.describe(row)}")
        out.append([_token(f"input_ids[{i}][{j}]", int(t) if isinstance(t, np.integer) else t, vocab)
                    for j, t in enumerate(row)])
    return out


def _eos_ids(eos_token_id, vocab):
    if eos_token_id is None:
        return np.zeros((0,), np.int64)
    ids = [eos_token_id] if not isinstance(eos_token_id, (list, tuple)) else list(eos_token_id)
    return np.array([_token("eos_token_id", t, vocab) for t in ids], np.int64)


def _budgets(max_new_tokens, batch):
    """max_new_tokens -> int64 [B]: one int for every row, or one a row."""
    if isinstance(max_new_tokens, (list, tuple, np.ndarray)):
        if len(max_new_tokens) != batch:
            raise ValueError(f"max_new_tokens must be an int or one int per prompt ({batch}), got "
                             f"{len(max_new_tokens)} values")
        values = [_checks.check_positive_int(f"max_new_tokens[{i}]", int(v) if isinstance(v, np.integer) else v)
                  for i, v in enumerate(max_new_tokens)]
        return np.array(values, np.int64)
    return np.full(batch, _checks.check_positive_int("max_new_tokens", max_new_tokens), np.int64)


def _check_args(net, max_new_tokens, do_sample, top_k, top_p, temperature, repetition_penalty,
                pad_token_id, seed, streamer, use_past):
    c = _checks
    vocab = net.config.vocab_size
    if not isinstance(max_new_tokens, (list, tuple, np.ndarray)):
        c.check_positive_int("max_new_tokens", max_new_tokens)
    c.check_bool("do_sample", do_sample)
    c.check_int("top_k", top_k, minimum=0)
    c.check_number("top_p", top_p, above=0, maximum=1)
    c.check_number("temperature", temperature, above=0)
    c.check_number("repetition_penalty", repetition_penalty, above=0)
    if pad_token_id is not None:
        _token("pad_token_id", pad_token_id, vocab)
    if seed is not None:
        c.check_int("seed", seed, minimum=0)
    if streamer is not None and not (callable(getattr(streamer, "put", None))
                                     and callable(getattr(streamer, "end", None))):
        raise TypeError(f"streamer must have put(tokens) and end() methods, got {c.describe(streamer)}")
    if use_past is not None:
        c.check_bool("use_past", use_past)


# ------------------------------------------------------------------------------------------------
# choosing tokens (host, numpy)
# ------------------------------------------------------------------------------------------------
def _penalize(logits, buf, lengths, penalty):
    """HF / MindFormers' repetition penalty: a logit of a token already in the row is divided by
    ``penalty`` when positive, multiplied when negative."""
    for b in range(logits.shape[0]):
        seen = np.unique(buf[b, :lengths[b]])
        values = logits[b, seen]
        logits[b, seen] = np.where(values > 0, values / penalty, values * penalty)
    return logits


def _sample(logits, top_k, top_p, temperature, rng):
    """One draw a row from softmax(logits / temperature) restricted to top-k, then top-p."""
    logits = logits.astype(np.float64) / temperature
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = np.partition(logits, vocab - top_k, axis=-1)[:, vocab - top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    out = np.empty(logits.shape[0], np.int64)
    for b, row in enumerate(logits):
        order = np.argsort(-row, kind="stable")
        probs = np.exp(row[order] - row[order[0]])
        probs /= probs.sum()
        if top_p < 1.0:
            keep = np.searchsorted(np.cumsum(probs), top_p) + 1  # smallest prefix with mass >= top_p
            probs = probs[:keep] / probs[:keep].sum()
            order = order[:keep]
        out[b] = order[rng.choice(len(probs), p=probs)]
    return out


def _adapter_selection(net, adapter_names, batch):
    """``(mix, scope)`` for ``adapter_names``: ``mix`` the extra graph input, a one-hot [B, K] that
    every LoRA cell reads (graph/adapters.py), ``()`` to keep the plain graphs; ``scope`` the context
    the call runs in. A network with DoRA cells cannot mix rows: a batch whose rows all name one
    adapter runs it as the active adapter instead (``running_adapter``), any other is refused."""
    if adapter_names is None:
        return (), contextlib.nullcontext()
    uniform = isinstance(adapter_names, (list, tuple)) and len(adapter_names) == batch and \
        len({name if isinstance(name, str) else id(name) for name in adapter_names}) == 1
    if uniform and unmixable_cells(net):
        return (), running_adapter(net, adapter_names[0])
    return (Tensor(adapter_rows(net, adapter_names, batch)),), contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------
# generate
# ------------------------------------------------------------------------------------------------
def generate(net, input_ids, max_new_tokens, do_sample=False, top_k=0, top_p=1.0, temperature=1.0,
             repetition_penalty=1.0, eos_token_id=None, pad_token_id=None, seed=None, streamer=None,
             adapter_names=None, use_past=None, output_logits=False):
    """Continue each prompt by up to ``max_new_tokens`` tokens.

    Args:
        net: a causal LM of the package (``LlamaForCausalLM``), LoRA or not, merged or not.
        input_ids: one prompt (a list of token ids), several of any lengths (a list of such lists),
            or a 2-D int array / Tensor of equal-length prompts.
        max_new_tokens (int or list of int): > 0, for every row or one a row; prompt + new tokens must
            fit the model (``seq_length + 1`` positions).
        do_sample (bool): draw from the distribution (else greedy argmax).
        top_k (int): keep the k most likely tokens when sampling; 0 keeps all.
        top_p (float): in (0, 1]: keep the smallest set of tokens with this probability mass.
        temperature (float): > 0, divides the logits when sampling.
        repetition_penalty (float): > 0; 1.0 is off (HF's rule, on the prompt and the new tokens).
        eos_token_id (int or list of int): a row stops after producing one of them (kept in the output).
        pad_token_id (int): fills the padding (default ``net.config.pad_token_id`` or 0).
        seed (int): seeds the numpy ``Generator`` of the draws; same seed, same tokens.
        streamer: an object with ``put(tokens)`` — called each step with an int64 ``[B]`` array of each
            row's new token (``pad_token_id`` for rows already finished) — and ``end()``.
        adapter_names (list of str): one adapter name a row, ``"__base__"`` for the base model: each
            row runs its own adapter in the same forward (HF PEFT's argument). The LoRA cells must be
            unmerged. A network with DoRA cells runs one adapter a call: every row the same name
            (then run as the active adapter for the call). None: every row runs the active adapter.
        use_past (bool): decode with the KV cache; default ``net.config.use_past``.
        output_logits (bool): also return the float32 ``[B, vocab]`` logits of every step.

    Returns:
        A list of token-id lists, each prompt followed by its new tokens; with ``output_logits`` the
        tuple ``(sequences, logits)``.

    Raises:
        TypeError, ValueError: a bad argument (before any work): for ``adapter_names`` an unknown
            name, a list of another length than the batch, merged LoRA cells.
    """
    cfg = net.config
    _check_args(net, max_new_tokens, do_sample, top_k, top_p, temperature, repetition_penalty,
                pad_token_id, seed, streamer, use_past)
    rows = _prompts(input_ids, cfg.vocab_size)
    eos = _eos_ids(eos_token_id, cfg.vocab_size)
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id or 0)
    use_past = cfg.use_past if use_past is None else use_past
    lengths = np.array([len(r) for r in rows], np.int64)
    batch = len(rows)
    budgets = _budgets(max_new_tokens, batch)
    width = int(lengths.max())
    total = int((lengths + budgets).max())
    if total > net.model.max_length:
        row = int(np.argmax(lengths + budgets))
        raise ValueError(f"max_new_tokens must be <= {net.model.max_length - lengths[row]} for prompt {row} "
                         f"({lengths[row]} tokens; the model holds {net.model.max_length} positions), "
                         f"got {budgets[row]}")
    mix, scope = _adapter_selection(net, adapter_names, batch)
    buf = np.full((batch, total), pad, np.int32)
    for b, row in enumerate(rows):
        buf[b, :len(row)] = row
    rng = np.random.default_rng(seed)
    scope.__enter__()  # pylint: disable=unnecessary-dunder-call  # its refusals come before any change
    was_training = net.training
    net.set_train(False)
    prefill, decode, full = graph_cells(net)
    finished = np.zeros(batch, bool)
    ends = lengths + budgets
    all_logits = []
    try:
        last = Tensor(lengths - 1, ms.int32)
        if use_past:
            logits, caches = prefill(Tensor(buf[:, :width]), last, ms.mutable(net.new_cache(batch, total)), *mix)
        else:
            logits = full(Tensor(buf), last, *mix)
        for step in range(int(budgets.max())):
            scores = logits.asnumpy()
            if output_logits:
                all_logits.append(scores.copy())
            if repetition_penalty != 1.0:
                scores = _penalize(scores, buf, lengths, repetition_penalty)
            tokens = (_sample(scores, top_k, top_p, temperature, rng) if do_sample
                      else np.argmax(scores, -1).astype(np.int64))
            tokens[finished] = pad
            active = ~finished
            buf[active, lengths[active]] = tokens[active]
            lengths[active] += 1
            finished = finished | (active & (np.isin(tokens, eos) | (lengths >= ends)))
            if streamer is not None:
                streamer.put(tokens)
            if finished.all():
                break
            positions = Tensor(lengths - 1, ms.int32)
            if use_past:
                logits, caches = decode(Tensor(buf[np.arange(batch), lengths - 1][:, None]), positions,
                                        ms.mutable(caches), *mix)
            else:
                logits = full(Tensor(buf), positions, *mix)
    finally:
        scope.__exit__(None, None, None)
        net.set_train(was_training)
        if streamer is not None:
            streamer.end()
    sequences = [buf[b, :lengths[b]].tolist() for b in range(batch)]
    return (sequences, all_logits) if output_logits else sequences
