"""The one error secure aggregation raises when a round cannot be completed safely."""

from pocketlearn.errors import PocketlearnError


class SecAggError(PocketlearnError, RuntimeError):
    """A secure-aggregation round failed: too many dropouts, a corrupted share, a message out of order."""
