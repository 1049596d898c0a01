"""Policy sets: parse YAML with positions, validate, compile to immutable tables.

The engine only ever sees a :class:`CompiledPolicy`.
"""

from gatehouse.policy.loader import load_policy
from gatehouse.policy.model import ActionTable, Attribute, CompiledPolicy, Rule, TypeDef

__all__ = ["ActionTable", "Attribute", "CompiledPolicy", "Rule", "TypeDef", "load_policy"]
