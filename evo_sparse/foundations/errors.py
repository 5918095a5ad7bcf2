"""The one exception type the CLI turns into a one-line message and exit code 2."""


class EvoSparseError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""


class DataError(EvoSparseError):
    """The data set is missing, incomplete or corrupt."""


class ConfigError(EvoSparseError):
    """A setting is out of range, of the wrong type, or unknown."""


class RunStateError(EvoSparseError):
    """A run folder's files disagree with the command, or are damaged."""


class FailedEvaluationsError(EvoSparseError):
    """More fitness evaluations failed than the run allows (``--max-failed-share``)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a scheduler's stop, ``kill``, ``timeout``): unwinds like Ctrl-C, so finished work is kept."""


class AlgorithmError(EvoSparseError):
    """A search algorithm (a plug-in) raised or broke its contract (a mask of the wrong size or sparsity, no mask)."""
