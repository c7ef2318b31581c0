"""The one exception every script turns into a one-line `error: ...` (common.run_cli): the lowest
module of the project, so that any other can raise it without an import cycle."""


class UserError(Exception):
    """A mistake the user can fix (a missing file, a bad argument): shown as one line, no
    traceback."""
