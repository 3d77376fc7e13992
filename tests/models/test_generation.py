"""generate(): cached decoding against the no-cache forward and the numpy reference of
tests/reference.py, padding, batching, eos, LoRA merged / unmerged, sampling, compile counts, checks."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from mindpet_lite.models import LlamaConfig, LlamaForCausalLM
from mindpet_lite.models.generation import generate, graph_cells
from mindpet_lite.pet import get_pet_model
from tests.modes import pynative
from tests.reference import reference_logits

ms.set_device("CPU")

TINY = dict(hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, vocab_size=64, seq_length=24,
            intermediate_size=48)
PROMPTS = [[5, 9, 3, 17, 22, 8], [40, 2], [11, 12, 13, 14]]
NEW = 7


def _net(seed=1, **kw):
    ms.set_seed(seed)
    net = LlamaForCausalLM(LlamaConfig.from_dict(dict(TINY, **kw)))
    rng = np.random.default_rng(seed)
    for name, p in net.parameters_and_names():  # norms off ones, so a norm mix-up would show
        if "norm" in name:
            p.set_data(Tensor(1.0 + 0.2 * rng.standard_normal(p.shape), p.dtype))
    net.set_train(False)
    return net


def _lora_net():
    net = _net()
    get_pet_model(net, dict(target_modules=".*wq|.*wv|.*w2", lora_rank=4, lora_alpha=8, lora_dropout=0.0))
    rng = np.random.default_rng(3)
    for name, p in net.parameters_and_names():
        if "lora_b" in name:  # B starts at zero: give the branch something to do
            p.set_data(Tensor(0.3 * rng.standard_normal(p.shape).astype(np.float32)))
    net.set_train(False)
    return net


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture(scope="module")
def base():
    ms.set_context(mode=ms.GRAPH_MODE)
    return _net()


def _params64(net):
    return {name: p.asnumpy().astype(np.float64) for name, p in net.parameters_and_names()}


# ---- the cache against independent references -----------------------------------------------------
def test_every_decode_step_matches_the_numpy_reference_for_a_padded_batch(base):
    seqs, logits = generate(base, PROMPTS, NEW, use_past=True, output_logits=True)
    params = _params64(base)
    for b, (prompt, seq) in enumerate(zip(PROMPTS, seqs)):
        assert len(seq) == len(prompt) + NEW
        ref = reference_logits(params, TINY, np.array([seq[:-1]]))[0]  # [S, V], float64
        for step in range(NEW):
            np.testing.assert_allclose(logits[step][b], ref[len(prompt) - 1 + step], atol=1e-4, rtol=0)


def test_every_decode_step_matches_the_models_own_full_forward(base):
    seqs, logits = generate(base, PROMPTS, NEW, use_past=True, output_logits=True)
    with pynative():  # the reference: no graph compile per row length
        fulls = [base(Tensor(np.array([seq[:-1]], np.int32))).asnumpy()[0] for seq in seqs]
    for b, (prompt, full) in enumerate(zip(PROMPTS, fulls)):
        for step in range(NEW):
            np.testing.assert_allclose(logits[step][b], full[len(prompt) - 1 + step], atol=1e-4, rtol=0)


def test_batched_equals_each_prompt_alone_and_cache_equals_no_cache(base):
    batched = generate(base, PROMPTS, NEW, use_past=True)
    with pynative():  # the references, each prompt alone: no prefill / decode compile per prompt shape
        alone = [generate(base, p, NEW, use_past=True)[0] for p in PROMPTS]
    assert batched == alone
    assert batched == generate(base, PROMPTS, NEW, use_past=False)


def test_use_past_from_model_config_and_the_method():
    net = _net(use_past=True)
    assert net.config.use_past is True and "use_past" not in net.config.ignored_keys
    assert net.generate(PROMPTS, 3) == generate(net, PROMPTS, 3, use_past=False)
    prefill, decode, full = graph_cells(net)
    assert len(prefill.compile_cache) == 1 and len(decode.compile_cache) == 1


def test_one_prefill_and_one_decode_graph_for_many_tokens():
    net = _net()
    prefill, decode, _ = graph_cells(net)
    generate(net, PROMPTS, 12, use_past=True)
    assert (len(prefill.compile_cache), len(decode.compile_cache)) == (1, 1)
    generate(net, PROMPTS, 12, use_past=True, do_sample=True, seed=1)  # same shapes: nothing new
    assert (len(prefill.compile_cache), len(decode.compile_cache)) == (1, 1)
    # a new batch shape compiles one more decode graph, on its first step only (the graph cache
    # counts compiles, whatever the machine's load; the time a compile costs is in
    # benchmarks/bench_generate.py's "compile s" column)
    caches = ms.mutable(net.new_cache(2, 10))
    sizes = []
    for _ in range(3):
        decode(Tensor(np.ones((2, 1), np.int32)), Tensor(np.array([4, 6], np.int32)), caches)[0].asnumpy()
        sizes.append(len(decode.compile_cache))
    assert sizes == [2, 2, 2]


def test_max_new_tokens_per_row(base):
    full = generate(base, PROMPTS, NEW)
    short = generate(base, PROMPTS, [2, NEW, 1])
    assert short == [f[:len(p) + n] for f, p, n in zip(full, PROMPTS, [2, NEW, 1])]
    with pytest.raises(ValueError, match=r"max_new_tokens must be an int or one int per prompt \(3\), got 2"):
        generate(base, PROMPTS, [1, 2])


# ---- eos, padding, sampling -----------------------------------------------------------------------
def test_eos_stops_its_row_only(base):
    free = generate(base, PROMPTS, NEW, use_past=True)
    eos = free[0][len(PROMPTS[0]) + 2]  # row 0's third new token
    stopped = generate(base, PROMPTS, NEW, use_past=True, eos_token_id=eos)
    for prompt, seq, ref in zip(PROMPTS, stopped, free):
        new = ref[len(prompt):]
        cut = new.index(eos) + 1 if eos in new else len(new)
        assert seq == prompt + new[:cut]
    assert len(stopped[0]) == len(PROMPTS[0]) + 3


def test_sampling_is_seeded_and_respects_top_k(base):
    one = generate(base, PROMPTS, NEW, do_sample=True, seed=7, top_k=5, top_p=0.9, temperature=0.8)
    assert one == generate(base, PROMPTS, NEW, do_sample=True, seed=7, top_k=5, top_p=0.9, temperature=0.8)
    _, logits = generate(base, PROMPTS, NEW, do_sample=True, seed=7, top_k=1, output_logits=True)
    greedy = generate(base, PROMPTS, NEW)
    sampled_k1 = generate(base, PROMPTS, NEW, do_sample=True, seed=3, top_k=1)
    assert sampled_k1 == greedy and len(logits) == NEW


def test_repetition_penalty_changes_greedy_choices_like_hf(base):
    seqs, logits = generate(base, [PROMPTS[0]], 1, repetition_penalty=1e6, output_logits=True)
    assert seqs[0][-1] not in PROMPTS[0]  # every seen token pushed far down


class _Collect:
    def __init__(self):
        self.steps, self.ended = [], 0

    def put(self, tokens):
        self.steps.append(tokens.tolist())

    def end(self):
        self.ended += 1


def test_streamer_sees_each_step(base):
    streamer = _Collect()
    seqs = generate(base, PROMPTS, 4, streamer=streamer)
    assert streamer.ended == 1 and len(streamer.steps) == 4
    assert [row[len(p):] for row, p in zip(seqs, PROMPTS)] == [list(c) for c in zip(*streamer.steps)]


# ---- LoRA -------------------------------------------------------------------------------------------
def test_lora_unmerged_merged_and_cache_agree(base):
    net = _lora_net()
    unmerged, logits = generate(net, PROMPTS, NEW, use_past=True, output_logits=True)
    assert unmerged != generate(base, PROMPTS, NEW)  # the adapter matters (base: the same _net() without it)
    with pynative():  # the reference: no graph compile per row length
        fulls = [net(Tensor(np.array([seq[:-1]], np.int32))).asnumpy()[0] for seq in unmerged]
    for b, (prompt, full) in enumerate(zip(PROMPTS, fulls)):
        for step in range(NEW):
            np.testing.assert_allclose(logits[step][b], full[len(prompt) - 1 + step], atol=1e-4, rtol=0)
    lora_cells = [c for _, c in net.cells_and_names() if hasattr(c, "merge")]
    for cell in lora_cells:
        cell.merge()
    assert generate(net, PROMPTS, NEW, use_past=True) == unmerged
    assert generate(net, PROMPTS, NEW, use_past=False) == unmerged
    for cell in lora_cells:
        cell.unmerge()
    assert generate(net, PROMPTS, NEW, use_past=True) == unmerged


# ---- argument checks ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, text", [
    (dict(max_new_tokens=0), ValueError, "max_new_tokens must be an int > 0, got 0"),
    (dict(max_new_tokens=30), ValueError, "max_new_tokens must be <= 19"),
    (dict(top_p=0.0), ValueError, "top_p must be a number > 0 and <= 1, got 0.0"),
    (dict(temperature=-1.0), ValueError, "temperature must be a number > 0"),
    (dict(top_k=-1), ValueError, "top_k must be an int >= 0, got -1"),
    (dict(do_sample="yes"), TypeError, "do_sample must be a bool"),
    (dict(eos_token_id=64), ValueError, "eos_token_id must be an int >= 0 and < 64, got 64"),
    (dict(pad_token_id=-1), ValueError, "pad_token_id must be an int >= 0"),
    (dict(seed=1.5), TypeError, "seed must be an int >= 0"),
    (dict(streamer=object()), TypeError, "streamer must have put(tokens) and end()"),
    (dict(input_ids=[[1, 2], []]), TypeError, "input_ids[1] must be a non-empty list"),
    (dict(input_ids=[[1, 99]]), ValueError, "input_ids[0][1] must be an int >= 0 and < 64, got 99"),
    (dict(adapter_names=["a"]), ValueError, "adapter_names must hold one name per row (3 rows), got 1"),
    (dict(adapter_names=["__base__", "a", "__base__"]), ValueError, "adapter_names[1]: unknown adapter 'a' (str); "
                                                                     "the network holds []"),
])
def test_bad_arguments_raise_before_any_work(base, kwargs, error, text):
    args = dict(input_ids=PROMPTS, max_new_tokens=3)
    args.update(kwargs)
    with pytest.raises(error) as err:
        generate(base, **args)
    assert text in str(err.value)
