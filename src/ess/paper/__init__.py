"""ess.paper: the reproduction of the paper's experiments on top of the measurement (`ess`).

- `training/`: the trainable mixers (registry), the small language model, the synthetic tasks
  and the training loop;
- `synthetic/`: the E1-E5, E7, E8 grid (one record per experiment), the ESS of trained models,
  their tables, verdicts and captions;
- `e6/`: text, delimiters, sequences, ESS per sequence, boundaries, modulation, E6's report, and
  fetching models and data;
- here: statistics, publishing tables and figures, provenance, config checks, the run plan and
  its cost model, status, the results summary and the CLI.

Nothing in `ess` imports from here (tests/test_imports.py).
"""
