"""Data: reading images safely, the MVTec AD folder layout, built-in dataset generators, the DataModule."""
