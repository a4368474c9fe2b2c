"""The benchmark scripts: the GPU check refuses to run without CUDA, before any work."""

import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: nothing to refuse")
def test_gpu_check_refuses_without_cuda(tmp_path):
    scratch = tmp_path / "scratch"
    run = subprocess.run(
        [str(ROOT / "benchmarks" / "gpu_check.sh"), str(scratch)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "REFUSED: no CUDA device" in run.stderr and "Nothing was measured" in run.stderr
    assert not scratch.exists()
