"""Errors the CLI turns into one line on stderr and exit code 2 (bad input, not a bug)."""


class UserError(Exception):
    """Bad input from the user: the message is the whole story, one line, no traceback."""


class SpecError(UserError):
    pass


class DataError(UserError):
    pass
