"""Industrial visual inspection with a variational autoencoder.

Data flows data -> models -> training -> scoring -> tracking. Importing this package has no side
effects: no folders are created and no tracking URI is set until a command runs.
"""

__version__ = "0.1.0"
