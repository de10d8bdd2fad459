"""Errors whose message is written for the user: the CLI prints them without a traceback."""


class UserError(Exception):
    """Something the user can fix, said in words they can act on."""


class InvalidArgumentError(UserError, ValueError):
    """A name, flag or value that cannot be used."""
