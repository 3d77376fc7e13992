"""TrainableParamsCheckPoint: MindPet's path checks, and a short Model.train that writes only the
trainable parameters (with their trained values), keeping keep_checkpoint_max files."""
import os

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
import pytest
from mindspore import nn
from mindspore.train import CheckpointConfig, Model

from mindpet_lite.graph import TrainableParamsCheckPoint, freeze_delta


class _Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.body = nn.Dense(4, 4)
        self.head = nn.Dense(4, 2)

    def construct(self, x):
        return self.head(self.body(x))


def _train(net, callback, steps=4):
    rng = np.random.default_rng(0)
    data = ds.NumpySlicesDataset({"x": rng.standard_normal((steps * 2, 4)).astype(np.float32),
                                  "y": rng.integers(0, 2, steps * 2).astype(np.int32)}, shuffle=False).batch(2)
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    model = Model(net, loss, nn.SGD(net.trainable_params(), learning_rate=0.1))
    model.train(1, data, callbacks=[callback], dataset_sink_mode=False)


def test_saves_only_trainable_parameters_with_trained_values(tmp_path):
    net = _Net()
    freeze_delta(net, "bitfit")  # BitFit, as MindPet: only the biases train
    assert sorted(p.name for p in net.trainable_params()) == ["body.bias", "head.bias"]
    weight_before = net.body.weight.asnumpy().copy()
    cb = TrainableParamsCheckPoint(str(tmp_path), prefix="delta",
                                   config=CheckpointConfig(save_checkpoint_steps=1, keep_checkpoint_max=2))
    _train(net, cb)
    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".ckpt"))
    assert files == ["delta-1_3.ckpt", "delta-1_4.ckpt"]  # keep_checkpoint_max=2 of 4 saves
    saved = ms.load_checkpoint(str(tmp_path / "delta-1_4.ckpt"))
    assert sorted(saved) == ["body.bias", "head.bias"]
    np.testing.assert_array_equal(saved["head.bias"].asnumpy(), net.head.bias.asnumpy())
    assert net.head.bias.asnumpy().any()  # trained away from its zero start
    np.testing.assert_array_equal(net.body.weight.asnumpy(), weight_before)  # frozen


def test_path_checks_are_mindpets(tmp_path):
    for bad in (None, ""):
        with pytest.raises(ValueError, match="directory is required"):
            TrainableParamsCheckPoint(bad)
    with pytest.raises(ValueError, match="absolute"):
        TrainableParamsCheckPoint("relative/dir")
    os.mkdir(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(ValueError, match="symbolic link"):
        TrainableParamsCheckPoint(str(tmp_path / "link"))
    with pytest.raises(TypeError, match="config"):
        TrainableParamsCheckPoint(str(tmp_path), config={})
    with pytest.raises(ValueError, match="prefix"):
        TrainableParamsCheckPoint(str(tmp_path), prefix="a/b")
    assert not (tmp_path / "relative").exists()
