"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class TrilemmaError(Exception):
    """A problem with the inputs (params, files, data), not a bug."""


def brief(err: BaseException, limit: int = 160, whole: bool = False) -> str:
    """The first line of a library's error text (`whole`: all of it, on one line), shortened:
    it goes inside a one-line message."""
    text = str(err).strip()
    line = " ".join((text if whole else text.split("\n")[0]).split()) or type(err).__name__
    return line if len(line) <= limit else line[:limit - 1] + "…"


# what load_state_dict raises for a saved state that does not fit the object built now (a
# weight missing or of another shape, a key of another kind)
STATE_DOES_NOT_FIT = (RuntimeError, KeyError, ValueError, TypeError, AttributeError)


class ConfigError(TrilemmaError):
    pass


class DataError(TrilemmaError):
    pass


class TrainingDiverged(TrilemmaError):
    pass


class NoJudge(TrilemmaError):
    """The data set has no labels, so no classifier was trained; the message says why."""


class Interrupted(Exception):
    """Ctrl-C during training; the message says where a rerun resumes. Not a TrilemmaError: the
    CLI exits with 130, not 2."""
