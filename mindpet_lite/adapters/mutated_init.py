"""Save a PiSSA / OLoRA-started adapter as an ordinary LoRA adapter of the ORIGINAL base.

Such a network trains A, B on a base that keeps the residual W_res = W - s·B₀·A₀, so its A, B
mean nothing on W itself. On save the pair becomes the update it made to W (HF PEFT's conversion,
``path_initial_model_for_weight_conversion``):

    W_res + s·B·A = W + s·(B·A - B₀·A₀) = W + s·[B, -B₀]·[A; A₀]

a rank-2r pair, with lora_alpha doubled (× sqrt 2 under rsLoRA) so that s is unchanged, and
init_lora_weights=True in the metadata. Merge, export to PEFT and another user's load then see a
plain adapter of the original base (load it onto a network built with the saved pet_config). The
DoRA magnitude is kept as it is: the adapted weight, hence its row norm, is the same matrix.
"""
import dataclasses
import logging
import math

from mindpet_lite.delta.lora import LORA_A, LORA_B
from mindpet_lite.delta.lora_init import plain_lora_factors

logger = logging.getLogger(__name__)

__all__ = ["convert_weight_init"]


def convert_weight_init(net, tensors, config):
    """``(tensors, config)`` with every PiSSA / OLoRA pair of ``net`` replaced by its rank-2r plain
    LoRA form (a new dict and LoraConfig); the inputs as they are when no cell started from W.

    Raises:
        ValueError: some LoRA cells started from W and others did not (one adapter, one rank).
    """
    cells = {name: cell for name, cell in net.cells_and_names() if hasattr(cell, "lora_init_factors")}
    started = {name for name, cell in cells.items() if cell.lora_init_factors is not None}
    if not started:
        return tensors, config
    if started != set(cells):
        raise ValueError(f"{len(started)} LoRA layers started from their weights (PiSSA / OLoRA) and "
                         f"{len(cells) - len(started)} did not: one adapter file cannot hold both ranks")
    out = dict(tensors)
    for name in sorted(started):
        cell = cells[name]
        a_name, b_name = cell.mindpet_delta_lora_a.name, cell.mindpet_delta_lora_b.name
        if a_name not in out or b_name not in out:
            raise ValueError(f"{name}: {LORA_A} / {LORA_B} are not among the saved tensors")
        out[a_name], out[b_name] = plain_lora_factors(out[a_name], out[b_name], *cell.lora_init_factors)
    if config is not None:
        factor = math.sqrt(2.0) if config.use_rslora else 2
        config = dataclasses.replace(config, lora_rank=2 * config.lora_rank, lora_alpha=factor * config.lora_alpha,
                                     init_lora_weights=True)
    logger.info("save_adapter: %d PiSSA / OLoRA pairs saved as plain LoRA of the original base (rank %s)",
                len(started), config.lora_rank if config is not None else "2r")
    return out, config
