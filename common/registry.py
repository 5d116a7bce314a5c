"""Name -> object registries that fail with the list of valid names.

Built on fvcore's Registry; its `get` only says a name is missing, while a user who typed an op,
space or dataset name wants to see what exists.
"""
from __future__ import annotations

from typing import Any

from fvcore.common.registry import Registry as _FvcoreRegistry


class Registry(_FvcoreRegistry):
    """fvcore Registry with explicit names and a `KeyError` that lists what is registered."""

    def add(self, name: str, obj: Any) -> Any:
        self._do_register(name, obj)
        return obj

    def named(self, name: str):
        """Decorator: register the decorated object under `name`."""
        return lambda obj: self.add(name, obj)

    def get(self, name: str) -> Any:
        if name not in self._obj_map:
            raise KeyError(
                f"unknown {self._name} {name!r}; registered: {', '.join(sorted(self._obj_map))}"
            )
        return self._obj_map[name]

    def names(self) -> list[str]:
        return list(self._obj_map)

    def newest_for(self, module: Any) -> Any:
        """Of rules with a `layer_type` and an `applies` test (layer, attention, branch rules):
        the most recently registered one that covers `module` (None: none does)."""
        for rule in reversed(self._obj_map.values()):
            if isinstance(module, rule.layer_type) and rule.applies(module):
                return rule
        return None
