"""Exceptions shared by all layers."""


class UserError(Exception):
    """An error caused by user input (a path, a flag, a dataset, a checkpoint).

    The message must name the offending file/field and say what was expected. The ``recokd``
    command prints it without a traceback and exits with status 2.
    """


class KDError(UserError, ValueError):
    """A bad configuration of the KD core (:mod:`recokd.kd`: taps, methods and their options, levels,
    schedules) or inputs that do not fit it. The one error type ``recokd.kd`` raises for those: a
    :class:`UserError` (the ``recokd`` command prints it without a traceback) and a ``ValueError`` (what
    Python code calling the losses directly expects)."""
