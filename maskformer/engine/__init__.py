"""Training and evaluation engine (trainer, checkpointing, config loading); import the modules directly."""
