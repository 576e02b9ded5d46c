"""VIP5 model package: config, tokenizer, prompts, encoding, model, adapters, checkpoints, scoring.

Importing this package is light; torch/transformers load when the submodules are imported.
"""
