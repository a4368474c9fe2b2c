"""Tiny random stand-ins of the Hub models of config/paper.yaml, laid out as a Hub cache.

Each stand-in has its family's real layer structure (the transformers class the real model
loads as, its mixer, its RoPE fraction, its key/value head sharing, its d_state) with few layers
and small widths, random weights in the dtype asked for, and a byte-level BPE tokenizer trained
on the E6 passages (so every delimiter exists). `write_hub_cache` lays a model directory out as
`huggingface_hub` does (blobs, snapshots/<commit>, refs/<branch>), so the real Hub client reads
it with HF_HUB_OFFLINE=1. Used by the offline E6 chain test (tests/test_e6_hub.py) and by the
SLURM rehearsal of config/paper.yaml.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

# The Hub repos of config/paper.yaml, by family.
PAPER_REPOS = {
    "falcon_mamba": "tiiuae/falcon-mamba-7b",
    "mamba": "state-spaces/mamba-2.8b-hf",
    "gpt_neox": "EleutherAI/pythia-2.8b",
    "phi": "microsoft/phi-2",
    "mistral": "mistralai/Mistral-7B-v0.1",
    "llama": "meta-llama/Meta-Llama-3-8B",
}
FAMILIES = tuple(PAPER_REPOS)
# Files a real repo holds beside its safetensors that fetch must leave on the Hub.
DUPLICATE_WEIGHT_FILES = ("pytorch_model.bin", "consolidated.safetensors", "original/params.json")


@dataclass(frozen=True)
class Standin:
    """A stand-in written to `directory`: its family, heads or channels per layer (n_heads of
    the workflow config), layers and the shape numbers ess.paper.e6.sequence_ess.operator_bytes
    takes."""

    family: str
    directory: Path
    n_layers: int
    n_heads: int
    state_size: int  # d_state (SSM) or head_dim (attention)


def _config(family: str, vocab_size: int, n_layers: int, width: int, max_length: int):
    """The family's transformers config at a small width, structure as the paper's model."""
    import transformers as t

    common = dict(vocab_size=vocab_size, num_hidden_layers=n_layers, hidden_size=width)
    attention = dict(
        common,
        intermediate_size=2 * width,
        num_attention_heads=4,
        max_position_embeddings=max_length,
    )
    if family in ("falcon_mamba", "mamba"):
        cls = t.FalconMambaConfig if family == "falcon_mamba" else t.MambaConfig
        # d_state 16 and expand 2 as both paper models; d_inner = 2 width channels
        return cls(**common, state_size=16, expand=2, conv_kernel=4, time_step_rank=8)
    if family == "gpt_neox":  # Pythia: partial rotary (25%), parallel residual
        return t.GPTNeoXConfig(**attention, rotary_pct=0.25, use_parallel_residual=True)
    if family == "phi":  # phi-2: partial rotary (40%), dense q/k/v, parallel block
        return t.PhiConfig(**attention, partial_rotary_factor=0.4)
    if family == "mistral":  # grouped keys (4 heads read 2 kv heads), sliding window > L
        return t.MistralConfig(**attention, num_key_value_heads=2, sliding_window=4096)
    if family == "llama":  # Llama 3: grouped keys, rope theta 500000
        return t.LlamaConfig(**attention, num_key_value_heads=2, rope_theta=500000.0)
    raise ValueError(f"no stand-in for family {family!r}; allowed: {', '.join(FAMILIES)}")


def standin_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on E6's passages (ess.paper.e6.text.train_tokenizer)."""
    from ess.paper.e6.text import load_passages, train_tokenizer

    return train_tokenizer(load_passages(120, 400, split="train")[:200], vocab_size=vocab_size)


def build_standin(
    family: str,
    directory: Path,
    dtype: torch.dtype = torch.bfloat16,
    *,
    n_layers: int = 2,
    width: int = 64,
    max_length: int = 4096,
    duplicates: bool = False,
    shard_bytes: int | None = None,
    seed: int = 0,
    tokenizer=None,
) -> Standin:
    """Write a random stand-in of `family` (one of FAMILIES) as a transformers directory.

    Weights in `dtype`, safetensors (sharded with an index when `shard_bytes` is given).
    duplicates=True adds the copies real repos hold beside their safetensors
    (DUPLICATE_WEIGHT_FILES: a pickled .bin, a consolidated.safetensors, an original/ folder),
    which a fetch must not copy. Returns the Standin.
    """
    directory = Path(directory)
    tokenizer = tokenizer or standin_tokenizer()
    config = _config(family, len(tokenizer), n_layers, width, max_length)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    shard = {} if shard_bytes is None else {"max_shard_size": shard_bytes}
    model.save_pretrained(directory, safe_serialization=True, **shard)
    tokenizer.save_pretrained(directory)
    if duplicates:
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        torch.save(state, directory / "pytorch_model.bin")
        from safetensors.torch import save_file

        save_file(state, str(directory / "consolidated.safetensors"))
        (directory / "original").mkdir()
        (directory / "original" / "params.json").write_text(json.dumps({"dim": width}) + "\n")
    if family in ("falcon_mamba", "mamba"):
        return Standin(family, directory, n_layers, config.intermediate_size, config.state_size)
    return Standin(family, directory, n_layers, 4, width // 4)


def snapshot_commit(model_dir: Path) -> str:
    """A 40-hex commit id for a directory: sha1 over its files' relative paths and contents."""
    digest = hashlib.sha1()
    for file in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        digest.update(file.relative_to(model_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def write_hub_cache(
    hub_cache: Path, repo_id: str, model_dir: Path, branch: str = "main", commit: str | None = None
) -> str:
    """Lay `model_dir` out in the Hub cache `hub_cache` (HF_HUB_CACHE) as huggingface_hub does:
    models--<org>--<name>/blobs/<sha256>, snapshots/<commit>/<file> symlinks to the blobs, and
    refs/<branch> holding the commit. Returns the commit (`snapshot_commit` unless given)."""
    commit = commit or snapshot_commit(model_dir)
    repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs" / branch).write_text(commit)
    return commit
