"""The shape of a LanguageModel: its mixers by layer, widths and the mixers' settings.

Torch-free, so that the grid, the plan and the config checks build and validate configs without
torch; the mixers and the model import it (no cycle between them).
"""

from __future__ import annotations

from dataclasses import dataclass

from ess.paper.training.registry import MIXER_NAMES


@dataclass
class ModelConfig:
    """layers: mixer pattern, comma-separated, cycled to n_layers ("GLA,SA" -> GLA, SA, GLA, ...).

    state_size: TSS (d_k per head, or S6's d_state). window: SWA's w. gate_tau: tau of WLA/GLA's
    a = sigmoid(.)^(1/tau). gla_s6_alpha: GLA-S6's C_t = alpha q_t (None -> 1/sqrt(state_size)).
    dt_min, dt_max: initial range of S6 / GLA-S6's step dt. head_norm: RMS-normalise each head's
    output y of LA/WLA/GLA/GLA-S6 before the output projection (GLA's output norm; it makes
    the layer invariant to the scale of T, which unnormalised linear attention otherwise lacks).
    """

    vocab_size: int = 64
    d_model: int = 64
    n_layers: int = 2
    layers: str = "GLA"
    n_heads: int = 1
    state_size: int = 16
    window: int = 16
    conv_size: int = 4
    head_norm: bool = True
    mlp_ratio: int = 4
    gate_tau: float = 16.0
    gla_s6_alpha: float | None = None
    dt_min: float = 1e-3
    dt_max: float = 1e-1

    def __post_init__(self) -> None:
        self.layer_kinds()  # validates the pattern
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "state_size", "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.conv_size < 0:
            raise ValueError(f"conv_size must be >= 0 (0 = no convolution), got {self.conv_size}")
        if self.mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0 (0 = no MLP sublayer), got {self.mlp_ratio}")

    def layer_kinds(self) -> list[str]:
        """The mixer of each layer: the pattern cycled to n_layers (length must divide it)."""
        pattern = [p.strip().upper() for p in self.layers.split(",")]
        for p in pattern:
            if p not in MIXER_NAMES:
                known = ", ".join(MIXER_NAMES)
                raise ValueError(f"unknown mixer {p!r} in layers={self.layers!r}; known: {known}")
        if self.n_layers % len(pattern) != 0:
            raise ValueError(
                f"layer pattern {self.layers!r} has {len(pattern)} entries, which does not divide "
                f"n_layers={self.n_layers}"
            )
        return pattern * (self.n_layers // len(pattern))
