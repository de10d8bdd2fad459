"""Errors whose message is written for the user: the CLI prints them without a traceback."""


class UserError(Exception):
    """Something the user can fix, said in words they can act on."""


class InvalidArgumentError(UserError, ValueError):
    """A name, flag or value that cannot be used."""


class ModelNotFoundError(UserError):
    """The model is not where its id says, or could not be fetched from there."""


def first_line(error: BaseException) -> str:
    """The gist of a library's error, for a one-line message (the error itself stays the cause)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
