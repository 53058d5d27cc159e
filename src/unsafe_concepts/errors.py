"""The one exception type the CLI turns into a clear message instead of a traceback."""


class UserError(Exception):
    """Bad input or an unmet precondition, stated so that the user can fix it."""
