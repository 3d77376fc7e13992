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
