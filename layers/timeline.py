"""The events of one training step, in order (METHOD 4).

step_start, forward:<layer> for every node, loss, backward:<layer> in reverse,
update, step_end. A variable is alive from its alloc event through its free
event, both included.
"""

from __future__ import annotations

from bnncost.layers.graph import Graph


def step_events(graph: Graph) -> list[str]:
    names = [n.name for n in graph.nodes]
    return (
        ["step_start"]
        + [f"forward:{n}" for n in names]
        + ["loss"]
        + [f"backward:{n}" for n in reversed(names)]
        + ["update", "step_end"]
    )
