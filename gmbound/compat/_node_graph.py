"""Build the named node graph of a ``gmbound.compat.BoundedModule`` (see ``bound_ops``).

For a Sequential model the graph is a chain: the input node, then one node per (flattened)
layer. A ``CrossEntropyWrapper`` adds the labels input before the layers and the four loss
nodes after them (gather, sub, exp, sum). Nodes are named ``"/k"`` in that order.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..network import is_plain_sequential
from .bound_ops import (Bound, BoundExp, BoundGatherElements, BoundInput, BoundReduceSum, BoundSub,
                        node_class_for, node_class_for_op)


def named_leaves(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The leaf layers of a (nested) ``nn.Sequential`` with their module paths, in order."""
    out: list[tuple[str, nn.Module]] = []
    # _modules, not named_children() (which skips a module met before): Sequential.forward runs a module
    # listed twice (nn.Sequential(fc1, act, fc2, act)) twice, so it is two nodes, as in gmbound.network
    for name, child in ((n, m) for n, m in model._modules.items() if m is not None):
        path = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            out.extend(named_leaves(child, path + "."))
        else:
            out.append((path, child))
    return out


def build_node_graph(sequential: nn.Module, prefix: str = "", loss_fusion_wrapper: bool = False,
                     bound_graph=None) -> "OrderedDict[str, Bound]":
    """Nodes in graph order, keyed by name; each node's ``input_name``/``output_name`` filled in.

    ``prefix``: the path of ``sequential`` inside the wrapped model (``"model."`` in a wrapper).
    A model that is not a plain Sequential (a plain ``nn.Module``, or a Sequential with a forward of
    its own such as auto_LiRPA's ``DenseSequential``, whose layers are not a chain) was traced: it
    gets one node per node of its ``bound_graph``, linked as that graph is.
    """
    if bound_graph is not None and not is_plain_sequential(sequential):  # a traced model
        return build_node_graph_from(bound_graph, sequential, prefix, loss_fusion_wrapper)[0]
    nodes: list[Bound] = [BoundInput("", "input_0")]
    if loss_fusion_wrapper:
        nodes.append(BoundInput("", "input_1"))
    chain_start = len(nodes)
    for path, layer in named_leaves(sequential, prefix):
        nodes.append(node_class_for(layer)("", path, layer))
    model_output = len(nodes) - 1
    if loss_fusion_wrapper:
        nodes += [BoundGatherElements("", "gather"), BoundSub("", "sub"), BoundExp("", "exp"),
                  BoundReduceSum("", "sum")]
    for k, node in enumerate(nodes):
        node.name = f"/{k}"
    # the chain: input -> layers -> (gather and sub) -> exp -> sum
    for k in range(chain_start, model_output + 1):
        _link(nodes[k - 1] if k > chain_start else nodes[0], nodes[k])
    if loss_fusion_wrapper:
        gather, sub, exp, total = nodes[model_output + 1:]
        _link(nodes[model_output], gather)
        _link(nodes[1], gather)
        _link(nodes[model_output], sub)
        _link(gather, sub)
        _link(sub, exp)
        _link(exp, total)
    return OrderedDict((node.name, node) for node in nodes)


def build_node_graph_from(graph, model: nn.Module, prefix: str = "", loss_fusion_wrapper: bool = False
                          ) -> tuple["OrderedDict[str, Bound]", str]:
    """Nodes of a traced model's bound graph (``gmbound.graph.BoundGraph``), and its output node's name.

    ``graph.nodes[0]`` is the input; node ``i`` becomes ``"/{i + offset}"`` (offset 1 with the labels
    input of a loss-fusion wrapper), so, as for chains, the wrapper shifts every number by one.
    """
    paths = {id(m): f"{prefix}{name}" for name, m in model.named_modules() if name}
    nodes: list[Bound] = [BoundInput("", "input_0")]
    if loss_fusion_wrapper:
        nodes.append(BoundInput("", "input_1"))
    offset = len(nodes) - 1
    for gnode in graph.nodes[1:]:
        op = gnode.op
        module = getattr(op, "module", None)
        ori = paths.get(id(module)) if module is not None else None
        nodes.append(node_class_for_op(op)("", ori or getattr(op, "where", type(op).__name__), module))
    for k, node in enumerate(nodes):
        node.name = f"/{k}"
    for i, gnode in enumerate(graph.nodes[1:], start=1):
        for j in gnode.inputs:
            _link(nodes[j + offset if j > 0 else 0], nodes[i + offset])
    model_output = nodes[graph.output + offset]
    if loss_fusion_wrapper:
        loss_nodes = [BoundGatherElements("", "gather"), BoundSub("", "sub"), BoundExp("", "exp"),
                      BoundReduceSum("", "sum")]
        for node in loss_nodes:
            node.name = f"/{len(nodes)}"
            nodes.append(node)
        gather, sub, exp, total = loss_nodes
        _link(model_output, gather)
        _link(nodes[1], gather)
        _link(model_output, sub)
        _link(gather, sub)
        _link(sub, exp)
        _link(exp, total)
    return OrderedDict((node.name, node) for node in nodes), model_output.name


def _link(src: Bound, dst: Bound) -> None:
    src.output_name.append(dst.name)
    dst.input_name.append(src.name)
