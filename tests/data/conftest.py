"""Shared fixtures of the data tests: tiny SentencePiece models trained here (no download)."""
import random

import pytest

WORDS = ["alpha", "beta", "gamma", "delta", "lora", "rank", "mind", "spore", "token", "train",
         "the", "a", "of", "and", "data", "model", "layer", "weight", "merge", "adapter"]


def _train_sp(folder, pad_id=-1):
    spm = pytest.importorskip("sentencepiece")
    rng = random.Random(0)
    corpus = folder / "corpus.txt"
    with open(corpus, "w", encoding="utf-8") as f:
        for _ in range(400):
            f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n")
    prefix = folder / f"sp_pad{pad_id}"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=100, model_type="bpe",
        pad_id=pad_id, character_coverage=1.0, minloglevel=2)
    return str(prefix) + ".model"


@pytest.fixture(scope="session")
def sp_models(tmp_path_factory):
    """{'nopad': model without a pad piece, 'pad3': model with pad_id=3}; vocab_size 100."""
    folder = tmp_path_factory.mktemp("sp")
    return {"nopad": _train_sp(folder), "pad3": _train_sp(folder, pad_id=3)}
