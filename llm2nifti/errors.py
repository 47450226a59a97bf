"""Errors that mean "the input is wrong", as opposed to a bug."""

__all__ = ["UsageError", "only_choice"]


class UsageError(ValueError):
    """Bad input from the user: the message names the problem and what to do.

    The command line prints it on one line and exits with status 2.
    """


def only_choice(values, what, option):
    """The one value of ``values``; else a :class:`UsageError` listing the choices.

    ``what`` names the kind of value (``"site"``), ``option`` how to choose (``"--site"``).
    """
    values = sorted(set(v for v in values if v is not None))
    if len(values) == 1:
        return values[0]
    if not values:
        raise UsageError(f"no {what} to choose from")
    raise UsageError(f"several {what}s ({', '.join(map(str, values))}): choose one with {option}")
