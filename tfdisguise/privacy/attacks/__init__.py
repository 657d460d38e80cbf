"""Attacks the papers did not run, one module each, behind one interface (`base`).

A module registers its attack with `@register_attack(name, level=...)`. Importing
this package imports every module in this folder, so adding an attack is adding a
file; registration order (the built-ins first, then the others by file name) is
the order in which `run_attacks` runs them and the report shows them.

Built in: `known_plaintext` (level 2, kpa.py), `block_norm` (level 1, block_norm.py)
and `key_agnostic` (level 1, key_agnostic.py).

>>> list(ATTACKS)[:3]
['known_plaintext', 'block_norm', 'key_agnostic']
"""

import importlib
import pkgutil

from tfdisguise.privacy.attacks.base import (
    ATTACKS,
    Attack,
    AttackInput,
    AttackResult,
    attack_names,
    register_attack,
    run_attacks,
    true_permutation,
)

_BUILT_IN = ("kpa", "block_norm", "key_agnostic")
_OTHERS = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
for _module in _BUILT_IN + tuple(m for m in _OTHERS if m not in _BUILT_IN + ("base",)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackInput",
    "AttackResult",
    "attack_names",
    "register_attack",
    "run_attacks",
    "true_permutation",
]
