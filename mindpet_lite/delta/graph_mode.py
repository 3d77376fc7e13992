"""Facts of compiled graphs that cells need: how to make a compiled graph recompile, and whether the
parallel context splits operators by their shard() strategies."""
import mindspore as ms
from mindspore import ops

def _no_hook(cell, inputs):  # pylint: disable=unused-argument
    return None


def invalidate_compiled_graphs(cell):
    """Make every compiled graph that holds `cell` recompile on its next call.

    Graph-mode constants (LoRADense.merged, a swapped sub-cell) are baked into compiled graphs, and
    the parents of a cell are not known to it. MindSpore keys its graph cache on a global hook
    version, which adding and removing a hook bumps: that is the one switch that reaches them."""
    cell.register_forward_pre_hook(_no_hook).remove()


_UNSHARDED_MODES = ("stand_alone", "data_parallel")


@ops.constexpr
def operators_sharded():
    """True when MindSpore's auto-parallel context is set to a mode that splits operators by their
    ``shard()`` strategies (semi-auto, auto, hybrid parallel). Read when the graph is compiled (a
    constant of the graph; ``ms.get_auto_parallel_context`` cannot run inside ``construct``)."""
    return ms.get_auto_parallel_context("parallel_mode") not in _UNSHARDED_MODES
