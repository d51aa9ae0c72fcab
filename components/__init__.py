"""Pulumi components, one per deployable piece.

Each component takes a frozen dataclass of typed args, validates them before creating anything
(raising `InvalidArgs` that names the field), parents its children to itself, derives child names
from its own name, and calls `register_outputs` last.
"""

from components._args import InvalidArgs

__all__ = ["InvalidArgs"]
