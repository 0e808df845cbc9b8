"""Layer descriptors: validated, shape-inferred, each saying what it stores and what scratch it needs.

Imports nothing else of bnncost: roles are named here, formats are a strategy's business.
"""

from bnncost.layers.graph import Graph, Node, Tensor, build_graph, graph_of
from bnncost.layers.model import Model, ModelError, load_model, parse_model, zoo_names
from bnncost.layers.roles import FORMATTED_ROLES, ROLES
from bnncost.layers.scratch import Scratch, rows_held, scratch_needs
from bnncost.layers.storage import Stored, stored_variables
from bnncost.layers.timeline import step_events

__all__ = [
    "FORMATTED_ROLES", "Graph", "Model", "ModelError", "Node", "ROLES", "Scratch", "Stored",
    "Tensor", "build_graph", "graph_of", "load_model", "parse_model", "rows_held", "scratch_needs",
    "step_events", "stored_variables", "zoo_names",
]
