"""Errors that name the problem and the way out."""


class PocketlearnError(Exception):
    """Base of every error pocketlearn raises on purpose."""


class ConfigError(PocketlearnError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class UnsupportedModelError(PocketlearnError, ValueError):
    """A training method cannot be applied to this model's architecture."""


class BudgetError(PocketlearnError):
    """No training method fits the device's memory budget."""


class TrainingError(PocketlearnError, RuntimeError):
    """Training diverged or produced an unusable value (a NaN loss, say)."""


class DataError(PocketlearnError, ValueError):
    """A data set is missing, malformed or of the wrong shape."""
