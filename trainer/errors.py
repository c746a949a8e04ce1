"""Errors that CLIs turn into a one-line message and a non-zero exit instead of a traceback."""

import contextlib
import sys


class ColorizerError(Exception):
    """Base class: a problem with the user's input, not a bug in the program."""


class ConfigError(ColorizerError):
    """A flag or combination of flags is invalid."""


class DataError(ColorizerError):
    """Input data is missing, incomplete or corrupt."""


@contextlib.contextmanager
def exit_on_user_error():
    """For CLI mains: a ColorizerError becomes `error: ...` on stderr and exit 2 (flags) or 1 (data)."""
    try:
        yield
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ColorizerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
