"""`import ess` and the analysis modules do not import torch: the aggregates and notebooks
that only read tables run in an environment without it (envs/analysis.yaml, envs/notebooks.yaml
name why they still install it)."""

import subprocess
import sys

ANALYSIS_MODULES = ["ess", "ess.modulation", "ess.stats", "ess.publish", "ess.delimiters", "ess.e6"]


def test_analysis_modules_do_not_import_torch():
    code = (
        f"import {', '.join(ANALYSIS_MODULES)}; import sys; "
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
        "assert not loaded, loaded"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_the_metric_is_still_importable_from_ess():
    from ess import EssResult, effective_state_size
    from ess.metric import EssResult as from_metric

    assert EssResult is from_metric and callable(effective_state_size)
    assert "effective_state_size_ssm" in dir(__import__("ess"))
