"""ess: effective state-size of causal sequence-mixing operators.

The public entry points are `effective_state_size` (any materialised causal operator T) and
`effective_state_size_ssm` (an operator given by a time-varying realisation (A, B, C), never
materialised). See README.md for a worked example, docs/library.md for the API.

`ess` is the measurement (this package's modules); `ess.paper` reproduces the paper on top of
it, and nothing here imports from there. The public names are loaded from their modules on
first use, so that `import ess` and the modules that only read tables (ess.outputs, the
analysis modules of ess.paper) do not import torch: the aggregates and notebooks run without
it.
"""

from importlib import import_module

# Each public name and the module that defines it.
_SOURCES = {
    "EssResult": "ess.metric",
    "effective_state_size": "ess.dense_path",
    "effective_state_size_naive": "ess.metric",
    "effective_state_size_ssm": "ess.realisation_path",
}
__all__ = list(_SOURCES)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _SOURCES:
        return getattr(import_module(_SOURCES[name]), name)
    raise AttributeError(f"module 'ess' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
