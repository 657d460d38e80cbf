"""How private and how useful is a disguise setting: metrics, attacks, calibration.

Inputs and results are dataclasses; results have `summary()` and `to_json()`.
"""

from tfdisguise.privacy.attacks import BlockNormResult
from tfdisguise.privacy.attacks import KeyAgnosticResult
from tfdisguise.privacy.attacks import KnownPlaintextResult
from tfdisguise.privacy.attacks import block_norm_thumbnails
from tfdisguise.privacy.attacks import block_norm_attack
from tfdisguise.privacy.attacks import key_agnostic_attack
from tfdisguise.privacy.attacks import known_plaintext_attack
from tfdisguise.privacy.attacks import fit_block_linear
from tfdisguise.privacy.metrics import FanoResult
from tfdisguise.privacy.metrics import PrivacyReport
from tfdisguise.privacy.metrics import accuracy
from tfdisguise.privacy.metrics import attack_success
from tfdisguise.privacy.metrics import class_membership_test
from tfdisguise.privacy.metrics import fano_factor
from tfdisguise.privacy.metrics import misusability
from tfdisguise.privacy.metrics import visual_privacy

__all__ = [
    "BlockNormResult",
    "FanoResult",
    "KeyAgnosticResult",
    "KnownPlaintextResult",
    "PrivacyReport",
    "accuracy",
    "attack_success",
    "block_norm_attack",
    "block_norm_thumbnails",
    "class_membership_test",
    "fano_factor",
    "fit_block_linear",
    "key_agnostic_attack",
    "known_plaintext_attack",
    "misusability",
    "visual_privacy",
]
