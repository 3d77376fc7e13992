import os

import pytest

from tests.train import tiny


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """(base checkpoint, train MindRecord, eval MindRecord) of the tiny run, built once."""
    folder = str(tmp_path_factory.mktemp("tiny_assets"))
    base = tiny.make_base(os.path.join(folder, "base.ckpt"))
    train = tiny.make_data(folder, rows=32, seed=0, name="train")
    held_out = tiny.make_data(folder, rows=8, seed=1, name="eval")
    return base, train, held_out


@pytest.fixture(scope="session")
def tiny_uneven(tiny_assets, tmp_path_factory):
    """(base checkpoint, train MindRecord) with 2 to 5 label tokens a row (tiny.make_data uneven)."""
    folder = str(tmp_path_factory.mktemp("tiny_uneven"))
    return tiny_assets[0], tiny.make_data(folder, rows=32, seed=2, name="train", uneven=True)


@pytest.fixture(scope="session")
def tiny_uneven_batch4(tiny_uneven, tmp_path_factory):
    """Output dir of one process, 3 steps of global batch 4 on tiny_uneven: the reference that
    gradient accumulation (test_trainer), 2 msrun workers (test_distributed) and 2 nodes x 1 worker
    (test_multinode) must equal; run once, in this process (the runner is the same code either way)."""
    from mindpet_lite.run import main  # pylint: disable=import-outside-toplevel
    base, train = tiny_uneven
    out = str(tmp_path_factory.mktemp("tiny_uneven_batch4") / "run")
    assert main(tiny.flags(base, train, out, "--max_steps", "3", "--batch_size", "4")) == 0
    return out
