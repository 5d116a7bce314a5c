"""The bottom room: helpers every other room may use (registries, atomic file writes). It imports
nothing of the project."""
from maskednas.common.files import atomic_write
from maskednas.common.registry import Registry

__all__ = ["Registry", "atomic_write"]
