"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class TrilemmaError(Exception):
    """A problem with the inputs (params, files, data), not a bug."""


class ConfigError(TrilemmaError):
    pass


class DataError(TrilemmaError):
    pass


class TrainingDiverged(TrilemmaError):
    pass
