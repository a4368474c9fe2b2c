"""ess: effective state-size of causal sequence-mixing operators.

The public entry points are `effective_state_size` (any materialised causal operator T) and
`effective_state_size_ssm` (an operator given by a time-varying realisation (A, B, C), never
materialised). See README.md for a worked example.
"""

from ess.dense_path import effective_state_size
from ess.metric import EssResult, effective_state_size_naive
from ess.realisation_path import effective_state_size_ssm

__all__ = [
    "EssResult",
    "effective_state_size",
    "effective_state_size_naive",
    "effective_state_size_ssm",
]
__version__ = "0.1.0"
