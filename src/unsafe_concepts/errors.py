"""The one exception type the CLI turns into a clear message instead of a traceback."""


class UserError(Exception):
    """Bad input or an unmet precondition, stated so that the user can fix it."""


class ModalityMismatch(UserError):
    """A task the model cannot answer at all (an image task for a text-only model). A sweep skips such a
    pair with a note instead of counting it as a failure: a cross product of models and tasks often has some."""
