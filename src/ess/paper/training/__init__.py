"""The trainable models of the synthetic experiments: mixers, the language model, tasks,
training."""
