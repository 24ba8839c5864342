"""Pomona's exceptions. Each also inherits the matching builtin, so callers can catch either."""


class PomonaError(Exception):
    """Base of every error Pomona raises on purpose."""


class SettingsError(PomonaError, ValueError):
    """A setting's value is not of the expected form."""


class ContractError(PomonaError, ValueError):
    """A queue message or S3 key does not follow the contract between ingestion and featurization."""


class BadKeyError(ContractError):
    """An upload's key cannot be turned into a safe label and quarantine key."""
