"""Target profiles (data files) and the code that loads and checks them. Imports no torch."""

from common.errors import EdgeportError, TargetError
from targets.profile import Budget, RuntimeSettings, Target, Variant, builtin_target_names, load_target

__all__ = ["Budget", "EdgeportError", "RuntimeSettings", "Target", "TargetError", "Variant",
           "builtin_target_names", "load_target"]
