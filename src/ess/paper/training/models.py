"""A small language model whose sequence mixers expose their operators (nanoGPT style).

    tokens -> embedding -> N x [x + mixer(norm(x)); x + mlp(norm(x))] -> norm -> head (tied)

The mixers (ess.paper.training.registry; ModelConfig.layers, a comma-separated pattern cycled over
the layers, e.g. "GLA,SA") and their operators are in ess.paper.training.mixers.
`LanguageModel.operators(input_ids)` gives every layer's `ess.layers.LayerOperator` from one
forward pass; `transition_penalty` is the E4 regulariser on the mixers' transitions A_t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ess.layers import LayerOperator
from ess.paper.training.mixers import make_mixer
from ess.paper.training.model_config import ModelConfig

# ----------------------------------------------------------------------------------------------
# The model


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_ratio * config.d_model)
        self.proj = nn.Linear(config.mlp_ratio * config.d_model, config.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm(x)) (no MLP sublayer when mlp_ratio == 0)."""

    def __init__(self, kind: str, config: ModelConfig):
        super().__init__()
        self.kind = kind
        self.norm1 = nn.LayerNorm(config.d_model)
        self.mixer = make_mixer(kind, config)
        self.norm2 = nn.LayerNorm(config.d_model) if config.mlp_ratio > 0 else None
        self.mlp = MLP(config) if config.mlp_ratio > 0 else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (b, L, d) -> (block output, mixer input norm1(x)), both (b, L, d)."""
        mixer_input = self.norm1(x)
        x = x + self.mixer(mixer_input)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, mixer_input


class LanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(kind, config) for kind in config.layer_kinds())
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.embedding.weight  # tied, as nanoGPT
        self.apply(_init_weights)

    def hidden_with_mixer_inputs(self, input_ids: Tensor) -> tuple[Tensor, list[Tensor]]:
        """input_ids: (b, L) -> the normalised last hidden state (b, L, d_model), which the
        head maps to logits, and each layer's mixer input (b, L, d_model)."""
        x = self.embedding(input_ids)
        mixer_inputs = []
        for block in self.blocks:
            x, mixer_input = block(x)
            mixer_inputs.append(mixer_input)
        return self.norm(x), mixer_inputs

    def forward_with_mixer_inputs(self, input_ids: Tensor) -> tuple[Tensor, list[Tensor]]:
        """input_ids: (b, L) -> logits (b, L, V) and each layer's mixer input (b, L, d_model)."""
        hidden, mixer_inputs = self.hidden_with_mixer_inputs(input_ids)
        return self.head(hidden), mixer_inputs

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids: (b, L) -> logits (b, L, V)."""
        return self.forward_with_mixer_inputs(input_ids)[0]

    @torch.no_grad()
    def operators(self, input_ids: Tensor) -> list[LayerOperator]:
        """Every layer's operator (module docstring) on input_ids (b, L), from one forward,
        without gradients (for the ESS; the regulariser uses `transitions` instead). The head
        is not applied: no (b, L, V) logits."""
        _, mixer_inputs = self.hidden_with_mixer_inputs(input_ids)
        return [
            block.mixer.operator(x, layer)
            for layer, (block, x) in enumerate(zip(self.blocks, mixer_inputs, strict=True))
        ]


def _init_weights(module: nn.Module) -> None:
    """nanoGPT's initialisation: N(0, 0.02) linear and embedding weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


# ----------------------------------------------------------------------------------------------
# ESS-informed regulariser (docs/method.md, E4)


def transition_penalty(
    model: LanguageModel, mixer_inputs: list[Tensor], layers: list[int] | None = None
) -> Tensor:
    """sum over layers l of ||A^l - I||_F / sqrt(#entries of A^l)  (a scalar).

    A^l: the diagonal state transitions (b, H, L, N) of layer l on its mixer input, so the
    Frobenius norm runs over batch, heads, positions and state channels and the division by
    sqrt(b H L N) makes each layer's term the root-mean-square of (a - 1): independent of batch
    size, length and state size. layers=None takes every layer with a state-space realisation;
    naming an attention layer is an error.
    """
    total = mixer_inputs[0].new_zeros(())
    for A in regularised_transitions(model, mixer_inputs, layers).values():
        total = total + torch.linalg.vector_norm(A - 1.0) / math.sqrt(A.numel())
    return total


def regularised_transitions(
    model: LanguageModel, mixer_inputs: list[Tensor], layers: list[int] | None = None
) -> dict[int, Tensor]:
    """{layer l: A^l (b, H, L, N)} of the layers the E4 penalty reads (`transition_penalty`):
    `layers`, or every layer with a state-space realisation (None); naming an attention
    layer, or one out of range, is an error."""
    blocks = model.blocks
    if layers is None:
        layers = [i for i, b in enumerate(blocks) if b.kind not in ("SA", "SWA")]
    transitions = {}
    for i in layers:
        if not 0 <= i < len(blocks):
            raise ValueError(f"regulariser layer {i} out of range for {len(blocks)} layers")
        A = blocks[i].mixer.transitions(mixer_inputs[i])
        if A is None:
            raise ValueError(f"regulariser layer {i} is {blocks[i].kind}: it has no transitions A")
        transitions[i] = A
    return transitions


def state_transition_regulariser(
    model: LanguageModel, input_ids: Tensor, layers: list[int] | None = None
) -> Tensor:
    """The E4 penalty (see `transition_penalty`) on input_ids: (b, L), with its own forward."""
    return transition_penalty(model, model.forward_with_mixer_inputs(input_ids)[1], layers)
