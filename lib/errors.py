"""The two kinds of expected failure, which every script turns into one ``error: ...`` line
(``lib.cli``): the command line asked for something impossible (``UsageError``, exit status 2)
or the run could not do what was asked (``RunError``, exit status 1: bad data, an unreadable
file, a failed write). Each module's own error class derives from one of them; any other
exception is a bug and keeps its traceback."""


class UsageError(Exception):
    """Wrong arguments or config: nothing was run (exit status 2)."""


class RunError(Exception):
    """The run could not do what was asked: data, files, checkpoints (exit status 1)."""
