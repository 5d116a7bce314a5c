"""The bottom room: helpers every other room may use (registries, atomic file writes). It imports
nothing of the project."""
from maskednas.common.files import WriteError, atomic_write, write_error
from maskednas.common.registry import Registry

__all__ = ["Registry", "WriteError", "atomic_write", "write_error"]
