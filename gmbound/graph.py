"""The bound graph: the nodes of a network in topological order, each a bound op and its inputs.

Node 0 is the network input. A Sequential becomes a chain (node ``i + 1`` reads node ``i``);
a traced ``nn.Module`` (``gmbound.tracing``) any directed acyclic graph of the supported ops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

from .ops.base import BoundOp, Shape


@dataclass(frozen=True)
class Node:
    """One node: ``op`` applied to the outputs of the nodes ``inputs`` (``op`` None: the network input)."""

    op: Optional[BoundOp]
    inputs: tuple[int, ...] = ()


class BoundGraph:
    """Nodes in topological order (node 0: the input) and the node whose output is the network's."""

    def __init__(self, nodes: Sequence[Node], output: int):
        self.nodes = list(nodes)
        self.output = output
        self.users: list[list[int]] = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                if not 0 <= j < i:
                    raise ValueError(f"node {i} reads node {j}: the nodes are not in topological order")
                self.users[j].append(i)

    @classmethod
    def chain(cls, ops: Sequence[BoundOp]) -> "BoundGraph":
        """The graph of a Sequential: each op reads the one before it."""
        nodes = [Node(None)] + [Node(op, (i,)) for i, op in enumerate(ops)]
        return cls(nodes, len(ops))

    @property
    def ops(self) -> list[BoundOp]:
        return [n.op for n in self.nodes[1:]]

    def ancestors(self, targets: Iterable[int]) -> set[int]:
        """``targets`` and every node they read from, directly or not."""
        seen: set[int] = set()
        stack = list(targets)
        while stack:
            i = stack.pop()
            if i not in seen:
                seen.add(i)
                stack.extend(self.nodes[i].inputs)
        return seen

    def relus(self, within: Optional[set[int]] = None) -> list[int]:
        """The nonlinear nodes (among ``within``), in topological order: ReLUs and the ops of kind ``"nonlinear"``.

        These are the nodes whose CROWN step needs the bounds of their inputs (and where IBP's
        back-substitution of the specification stops).
        """
        return [i for i, n in enumerate(self.nodes)
                if n.op is not None and n.op.kind in ("relu", "nonlinear") and (within is None or i in within)]

    def infer_shapes(self, in_shape: Shape) -> list[Shape]:
        """Per-sample output shape of every node (node 0: ``in_shape``); ``ValueError`` naming the op that misfits."""
        shapes: list[Shape] = [tuple(in_shape)]
        for node in self.nodes[1:]:
            shapes.append(tuple(node.op.out_shape(*(shapes[j] for j in node.inputs))))
        return shapes

    def signature(self) -> tuple:
        """What the per-node shapes depend on besides the input shape: the ops' parameter shapes."""
        sig = []
        for node in self.nodes[1:]:
            op = node.op
            w = getattr(op.module, "weight", None) if op.module is not None else None
            extra = tuple(w.shape) if isinstance(w, torch.Tensor) else ()
            for attr in ("stride", "padding", "dilation", "target", "adaptive", "kernel"):
                if hasattr(op, attr):
                    extra += (attr, getattr(op, attr))
            extra += op.shape_signature()
            if hasattr(op, "channels"):
                extra += (op.channels,)
            sig.append((type(op).__name__, node.inputs) + extra)
        return tuple(sig)

    def forward(self, x: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        """The clean forward pass, node by node."""
        values: list[Optional[torch.Tensor]] = [x] + [None] * (len(self.nodes) - 1)
        remaining = [len(u) for u in self.users]
        for i, node in enumerate(self.nodes[1:], start=1):
            values[i] = node.op.forward(*(values[j] for j in node.inputs), update_running_stats=update_running_stats)
            for j in node.inputs:  # free what no later node reads
                remaining[j] -= 1
                if remaining[j] == 0 and j != self.output:
                    values[j] = None
        return values[self.output]
