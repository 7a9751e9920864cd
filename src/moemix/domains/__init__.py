"""Stage 1: sources -> deduplicated, split, tokenized domains (label routing or CLIMB-style clustering)."""
