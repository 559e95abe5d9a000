"""Training: the LightningModule around the plain network, and the `train` entry point."""
