"""How private and how useful is a disguise setting: metrics, attacks, calibration.

Inputs and results are dataclasses; results have `summary()` and `to_json()`.
Attacks live one per module in `tfdisguise/privacy/attacks/`, registered in
`ATTACKS` with `register_attack`; `run_attacks` runs a selection on one
`AttackInput`. Calibration (`calibrate.py`) runs them over a grid of settings and
`report.py` writes the report.
"""

from tfdisguise.privacy.attacks import (
    ATTACKS,
    Attack,
    AttackInput,
    AttackResult,
    attack_names,
    register_attack,
    run_attacks,
)
from tfdisguise.privacy.attacks.block_norm import BlockNormResult, block_norm_attack, block_norm_thumbnails
from tfdisguise.privacy.attacks.key_agnostic import KeyAgnosticResult, key_agnostic_attack
from tfdisguise.privacy.attacks.kpa import (
    BlockLinearEstimate,
    KnownPlaintextResult,
    fit_block_linear,
    known_plaintext_attack,
)
from tfdisguise.privacy.metrics import (
    FanoResult,
    PrivacyReport,
    accuracy,
    attack_success,
    class_membership_test,
    fano_factor,
    misusability,
    visual_privacy,
)

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackInput",
    "AttackResult",
    "BlockLinearEstimate",
    "BlockNormResult",
    "FanoResult",
    "KeyAgnosticResult",
    "KnownPlaintextResult",
    "PrivacyReport",
    "accuracy",
    "attack_names",
    "attack_success",
    "block_norm_attack",
    "block_norm_thumbnails",
    "class_membership_test",
    "fano_factor",
    "fit_block_linear",
    "key_agnostic_attack",
    "known_plaintext_attack",
    "misusability",
    "register_attack",
    "run_attacks",
    "visual_privacy",
]
