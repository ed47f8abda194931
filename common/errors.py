"""Errors that mean "the user gave bad input": reported in one line, with exit status 2."""


class UsageError(Exception):
    """A bad flag value, an unwritable output folder, or anything else the user can fix."""


class DataError(UsageError):
    """A data file that is missing, corrupt or of the wrong shape."""
