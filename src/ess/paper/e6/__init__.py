"""E6: ESS along delimited text in pretrained and trained language models, and what it tells."""
