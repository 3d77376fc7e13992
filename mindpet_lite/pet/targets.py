"""Which cells of a network a pet_config targets, and how a replacement is swapped in: the rules every
method that replaces dense layers shares (LoRA in ``pet/model.py``, the adapters in ``pet/adapter_model.py``).

A child cell is a target when ``re.match(target_modules, attribute_name)`` (MindFormers' rule: ``wq``) or
``re.fullmatch(target_modules, dotted_path)``; a child matching an exclude_layers pattern by the same two
rules is skipped with its subtree; a target is not descended into. The config supplies
``target_regex``, ``exclude_regexes``, ``exclude_layers``, ``target_modules``, ``saves_module(path)`` and
``in_layers(path)``.
"""
import logging

from mindspore import nn

from mindpet_lite.integrations import mcore as _mcore
from mindpet_lite.integrations import mindformers as _mf

logger = logging.getLogger(__name__)

_LISTED_PATHS = 8  # how many existing dense-layer paths a zero-match error shows


def _hit(regex, name, path):
    return regex.match(name) is not None or regex.fullmatch(path) is not None


def plan(network, config):
    """[(parent, attribute name, dotted path, cell)] of the targets, in tree order."""
    target = config.target_regex
    excludes = config.exclude_regexes
    found = []
    seen = {}  # id(target cell) -> path: a layer reachable at two paths cannot take one LoRA cell

    def visit(cell, prefix):
        for name, child in cell.name_cells().items():
            if child is None:
                continue
            path = f"{prefix}.{name}" if prefix else name
            if any(_hit(ex, name, path) for ex in excludes) or config.saves_module(path):
                continue
            if _hit(target, name, path) and config.in_layers(path):
                if id(child) in seen:
                    raise ValueError(f"target_modules selects one layer at two paths, {seen[id(child)]} "
                                     f"and {path}: a shared layer cannot be replaced at both; exclude one "
                                     "with exclude_layers")
                seen[id(child)] = path
                found.append((cell, name, path, child))
            else:
                visit(child, path)

    visit(network, "")
    for pattern, regex in zip(config.exclude_layers or [], excludes):
        if not any(_hit(regex, path.rsplit(".", 1)[-1], path) for path, _ in network.cells_and_names() if path):
            logger.warning("exclude_layers pattern %r matches no layer", pattern)
    return found


def _paths_by_cell(network):
    """{id(cell): [every dotted path it is reachable at]} (cells_and_names gives each cell once)."""
    paths = {}

    def visit(cell, prefix):
        for name, child in cell.name_cells().items():
            if child is not None:
                path = f"{prefix}.{name}" if prefix else name
                paths.setdefault(id(child), []).append(path)
                visit(child, path)

    visit(network, "")
    return paths


def check_shared(network, targets):
    """A target reachable at a path the plan leaves out would stay a plain layer there, sharing the
    weight but not the adapter: refuse, naming both paths."""
    planned = {path for _, _, path, _ in targets}
    all_paths = _paths_by_cell(network)
    for _, _, path, cell in targets:
        others = [p for p in all_paths.get(id(cell), []) if p != path and p not in planned]
        if others:
            raise ValueError(f"{path} is one layer shared with {', '.join(others)}: target_modules selects it at "
                             f"{path} only, so {others[0]} would compute without the adapter; a shared layer "
                             "cannot take LoRA (exclude all its paths with exclude_layers, or unshare it)")


def is_dense_like(cell):
    return isinstance(cell, nn.Dense) or _mf.is_linear(cell) or _mcore.is_parallel_linear(cell)


def no_match_message(network, config):
    dense = [path for path, cell in network.cells_and_names() if path and is_dense_like(cell)]
    if dense:
        shown = ", ".join(dense[:_LISTED_PATHS]) + (", ..." if len(dense) > _LISTED_PATHS else "")
        listing = f"dense layers in the network ({len(dense)}): {shown}"
    else:
        listing = ("the network has no nn.Dense, mindformers Linear or mcore ColumnParallelLinear / "
                   "RowParallelLinear layer")
    excl = f" (exclude_layers={config.exclude_layers!r})" if config.exclude_layers else ""
    return (f"target_modules {config.target_modules!r} matched no layer{excl}: a target re.match-es "
            f"a cell's attribute name or re.fullmatch-es its dotted path; {listing}")


def param_prefixes(network, targets, leaves):
    """{path: name prefix of the new parameters a replacement of the target adds}.

    The prefix is the layer's weight name without `.weight`, so the new names follow the base
    weights'; in a network built the usual way that is the dotted path, e.g.
    `model.layers.0.attention.wq`. Where a weight name does not end in `.weight` (or there is none: an
    mcore layer fed its weight), the names would not be unique, or a ``prefix.leaf`` of ``leaves``
    already exists, the dotted path is used for every target."""
    existing = {p.name for p in network.get_parameters()}
    prefixes = {}
    for _, _, path, cell in targets:
        name = cell.weight.name if getattr(cell, "weight", None) is not None else ""
        prefixes[path] = name[: -len(".weight")] if name.endswith(".weight") and name != ".weight" else None
    derived = [p for p in prefixes.values() if p is not None]
    new_names = {f"{p}.{leaf}" for p in derived for leaf in leaves}
    if len(derived) != len(prefixes) or len(set(derived)) != len(derived) or existing & new_names:
        return {path: path for path in prefixes}
    return prefixes


def swap(parent, attr, old, new, prefix):
    """Put `new` where `old` was and fix the parameter names MindSpore's assignment changed."""
    base_names = {id(p): p.name for _, p in old.parameters_and_names()}
    if isinstance(parent, nn.SequentialCell):
        parent[list(parent.name_cells()).index(attr)] = new
    elif isinstance(parent, nn.CellList):
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    for local, param in new.parameters_and_names():
        param.name = base_names.get(id(param), f"{prefix}.{local}")
