"""Errors that CLIs turn into a one-line message and a non-zero exit instead of a traceback."""


class ColorizerError(Exception):
    """Base class: a problem with the user's input, not a bug in the program."""


class ConfigError(ColorizerError):
    """A flag or combination of flags is invalid."""


class DataError(ColorizerError):
    """Input data is missing, incomplete or corrupt."""
