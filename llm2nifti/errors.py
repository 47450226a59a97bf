"""Errors that mean "the input is wrong", as opposed to a bug."""

__all__ = ["UsageError"]


class UsageError(ValueError):
    """Bad input from the user: the message names the problem and what to do.

    The command line prints it on one line and exits with status 2.
    """
