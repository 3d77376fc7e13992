"""apply_prefix: give a causal LM of the package a trainable prefix (``pet_type: ptuning2`` /
``prefixtuning``), then freeze everything else.

The model takes the prefix through ``set_prefix_encoder`` (``models.llama.LlamaForCausalLM``): it knows
the cell's interface, not this package's configs. The encoder is built for the model's layers, KV heads
and head size (under grouped-query attention the prefix holds KV heads, as HF PEFT's), checked before
the network changes.
"""
import logging

from mindspore import nn

from mindpet_lite import _checks
from mindpet_lite.delta.lora import LoRADense
from mindpet_lite.delta.ptuning2 import PrefixEncoder, PrefixTuningEncoder
from mindpet_lite.graph.freeze import freeze_delta, trainable_params_report

logger = logging.getLogger(__name__)

__all__ = ["apply_prefix", "build_prefix_encoder", "prefix_encoder_of"]

_ENCODERS = {"ptuning2": PrefixEncoder, "prefixtuning": PrefixTuningEncoder}


def prefix_encoder_of(network):
    """The prefix encoder a network holds, or None."""
    return getattr(getattr(network, "model", None), "prefix_encoder", None)


def build_prefix_encoder(model_config, config):
    """The encoder ``config`` (a Ptuning2Config / PrefixTuningConfig) describes for a model of
    ``model_config`` (num_layers, num_kv_heads, head_dim)."""
    pre_seq_len, projection, projection_dim, dropout = config.encoder_args()
    return _ENCODERS[config.delta_mark](pre_seq_len, model_config.num_layers, model_config.num_kv_heads,
                                        model_config.head_dim, projection, projection_dim, dropout)


def apply_prefix(network, config):
    """Attach the prefix encoder ``config`` describes to ``network`` and freeze all but it.

    Returns the summary {'pet_type', 'pre_seq_len', 'replaced': [], 'num_replaced': 0, 'trainable',
    'total', 'percent'}, also set as ``network.pet_summary`` (and the config as ``network.pet_config``).

    Raises:
        TypeError: the network does not take a prefix (no ``set_prefix_encoder``).
        ValueError: it already holds a prefix or LoRA cells (one method per network, so that its
            pet_config describes the whole adapter); the prefix does not fit the model's positions.
    """
    if not isinstance(network, nn.Cell):
        raise TypeError(f"network must be a mindspore.nn.Cell, got {_checks.describe(network)}")
    if not callable(getattr(network, "set_prefix_encoder", None)):
        raise TypeError(f"pet_type {config.pet_type!r} needs a model that takes prefix keys / values "
                        f"(set_prefix_encoder, e.g. mindpet_lite.models.LlamaForCausalLM); got {type(network).__name__}")
    if prefix_encoder_of(network) is not None:
        raise ValueError("the network already holds a prefix encoder: apply the prefix once")
    lora = [path for path, cell in network.cells_and_names() if isinstance(cell, LoRADense)]
    if lora:
        raise ValueError(f"the network holds {len(lora)} LoRA layers ({lora[0]}, ...): one pet_type per network")
    encoder = build_prefix_encoder(network.config, config)
    network.set_prefix_encoder(encoder)  # also makes graphs compiled without the prefix recompile
    mark = f"mindpet_delta_{config.delta_mark}"
    for name, param in network.parameters_and_names():  # names by path, as the other parameters have
        if mark in name:
            param.name = name
    freeze_delta(network, config.delta_mark, config.freeze_include, config.freeze_exclude)
    counts = trainable_params_report(network)
    summary = {"pet_type": config.pet_type, "pre_seq_len": encoder.pre_seq_len, "replaced": [], "num_replaced": 0,
               **counts}
    network.pet_config = config
    network.pet_summary = summary
    logger.info("%s: prefix of %d slots on %d layers (projection %s); trainable %d / %d (%.4f%%)", config.pet_type,
                encoder.pre_seq_len, encoder.num_layers, encoder.prefix_projection, counts["trainable"],
                counts["total"], counts["percent"])
    return summary
