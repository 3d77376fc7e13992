"""Optional integrations with other frameworks, loaded on first use.

`mindpet_lite.integrations.mindformers` (MindFormers' Linear, its pet pipeline, its models) and
`mindpet_lite.integrations.mcore` (its mcore ColumnParallelLinear / RowParallelLinear) are the only
modules of the toolkit that touch mindformers (importing it inside functions). Their public names are
re-exported here lazily: `from mindpet_lite.integrations import use_mindpet_lite` loads that module,
never mindformers itself.
"""
import importlib

_EXPORTS = {
    "is_available": "mindformers",
    "is_linear": "mindformers",
    "LoRALinear": "mindformers",
    "use_mindpet_lite": "mindformers",
    "build_model": "mindformers",
    "is_parallel_linear": "mcore",
    "LoRAParallelLinear": "mcore",
    "LoRAColumnParallelLinear": "mcore",
    "LoRARowParallelLinear": "mcore",
    "tensor_parallel_strategies": "mcore",
    "parallel_layout": "mcore",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
