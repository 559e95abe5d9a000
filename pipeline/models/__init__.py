"""Plain nn.Modules (no Lightning, no MLflow): the convolutional VAE, its plain-autoencoder twin, the ELBO."""

from pipeline.models.vae import ConvAutoencoder, ConvVAE, build_network

__all__ = ["ConvAutoencoder", "ConvVAE", "build_network"]
