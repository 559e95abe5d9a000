"""Plain nn.Modules (no Lightning, no MLflow): the convolutional VAE, its plain-autoencoder twin, the
conditional VAE, the learned anomaly map (head) and the losses as pure functions."""
