"""TrainableParamsCheckPoint: MindSpore's ModelCheckpoint writing only the trainable parameters, a drop-in
for MindPet's ``mindpet.graph.TrainableParamsCheckPoint``.

A delta-tuned network trains a few percent of its parameters; a full checkpoint per save repeats the frozen
base every time. The callback keeps everything of ModelCheckpoint (CheckpointConfig, file names
``PREFIX-EPOCH_STEP.ckpt``, keep_checkpoint_max, append_info) and hands ``save_checkpoint`` the list of
trainable parameters of the saved network instead of the network (MindPet's also holds the optimizer's
moments of those parameters; here they are left out: the file is the delta, as ``save_adapter`` writes it). MindPet's path rules: ``directory`` is
required, absolute, and not a symbolic link (checked before anything is created).
"""
import logging
import os

from mindspore import nn
from mindspore.train.callback import ModelCheckpoint

from mindpet_lite import _checks

logger = logging.getLogger(__name__)


def trainable_param_list(network, optimizer=None):
    """``[{"name", "data"}]`` of the network's trainable parameters (the form ``save_checkpoint`` takes
    in place of a Cell; the Parameters themselves, no copy). The state of ``optimizer`` (moments, step,
    learning rate: Parameters a train network also reports as trainable) is left out."""
    params = network.trainable_params()
    if optimizer is not None:
        state = {id(p) for p in optimizer.get_parameters()} - {id(p) for p in optimizer.parameters}
        params = [p for p in params if id(p) not in state]
    return [{"name": p.name, "data": p} for p in params]


class TrainableParamsCheckPoint(ModelCheckpoint):
    """Save the trainable parameters during training.

    Args:
        directory (str): absolute path of the folder to save into (created when missing), not a link.
        prefix (str): file name prefix, no '/'. Default "DELTA_CKP", as MindPet.
        config (mindspore.train.CheckpointConfig): when and how many to keep; None: the defaults.

    Raises:
        ValueError: directory None or empty, relative, or a symbolic link; a bad prefix.
        TypeError: directory not a str; config not a CheckpointConfig.
    """

    def __init__(self, directory, prefix="DELTA_CKP", config=None):
        if directory is None or directory == "":
            raise ValueError(f"directory is required: an absolute folder path, got {_checks.describe(directory)}")
        _checks.check_str("directory", directory)
        if os.path.islink(directory.rstrip(os.sep) or directory):
            raise ValueError(f"directory must not be a symbolic link, got {directory!r} -> {os.readlink(directory)!r}")
        if not os.path.isabs(directory):
            raise ValueError(f"directory must be an absolute path, got {directory!r}")
        super().__init__(prefix=prefix, directory=directory, config=config)

    def _save_ckpt(self, cb_params, force_to_save=False):
        network = self._config.saved_network if self._config.saved_network is not None else cb_params.train_network
        if not isinstance(network, nn.Cell):
            return super()._save_ckpt(cb_params, force_to_save)
        params = trainable_param_list(network, getattr(cb_params, "optimizer", None))
        if not params:
            raise ValueError("TrainableParamsCheckPoint: the network has no trainable parameters to save")
        # ModelCheckpoint saves `config.saved_network` when it is set: point it at the list for this call
        held = self._config._saved_network  # pylint: disable=protected-access
        self._config._saved_network = params  # pylint: disable=protected-access
        try:
            return super()._save_ckpt(cb_params, force_to_save)
        finally:
            self._config._saved_network = held  # pylint: disable=protected-access
