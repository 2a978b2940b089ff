"""pocketlearn: train neural networks where the data lives."""

from pocketlearn.errors import PocketlearnError

__version__ = "0.1.0"
__all__ = ["PocketlearnError", "__version__"]
