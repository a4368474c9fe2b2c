"""The trainable mixers, one record each: adding a mixer is a class in ess.paper.training.mixers
and a line here (docs/method.md §1.3 for their operators).

Torch-free: the tables and notebooks read attention-or-not, plot order and colour from here
without importing the mixers themselves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mixer:
    """name: as in ModelConfig.layers; module: its class in ess.paper.training.mixers;
    attention: its operator is T with a growing KV cache (TSS ignored), else a recurrence with a
    state of fixed size; colour: its matplotlib colour in every figure."""

    name: str
    module: str
    attention: bool
    colour: str


# In plot order: figures list mixers in this order.
MIXERS = (
    Mixer("SA", "Attention", attention=True, colour="C0"),
    Mixer("SWA", "SlidingWindowAttention", attention=True, colour="C6"),
    Mixer("LA", "LinearAttention", attention=False, colour="C1"),
    Mixer("WLA", "WeightedLinearAttention", attention=False, colour="C2"),
    Mixer("GLA", "GatedLinearAttention", attention=False, colour="C3"),
    Mixer("S6", "S6", attention=False, colour="C4"),
    Mixer("GLA-S6", "GLAS6", attention=False, colour="C5"),
)
MIXER_NAMES = tuple(mixer.name for mixer in MIXERS)
ATTENTION_MIXERS = tuple(mixer.name for mixer in MIXERS if mixer.attention)
OTHER_COLOUR = "0.3"  # grey, for anything not a mixer here


def mixer(name: str) -> Mixer:
    """The record of mixer `name` (one of MIXER_NAMES)."""
    for record in MIXERS:
        if record.name == name:
            return record
    raise ValueError(f"unknown mixer {name!r}; known: {', '.join(MIXER_NAMES)}")


def mixer_colour(name: str) -> str:
    """The matplotlib colour of mixer `name`; grey for anything else (a hybrid's label)."""
    return next((record.colour for record in MIXERS if record.name == name), OTHER_COLOUR)
