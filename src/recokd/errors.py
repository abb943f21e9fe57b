"""Exceptions shared by all layers."""


class UserError(Exception):
    """An error caused by user input (a path, a flag, a dataset, a checkpoint).

    The message must name the offending file/field and say what was expected. The ``recokd``
    command prints it without a traceback and exits with status 2.
    """
