"""The synthetic experiments E1-E5, E7, E8: their grid, the ESS of trained models, tables,
verdicts and captions."""
