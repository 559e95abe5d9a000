"""The commands of `python -m pipeline`: each assembles stages from the config and decides what to log."""
