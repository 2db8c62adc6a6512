"""Errors the CLI turns into one line on stderr and exit code 2 (bad input, not a bug)."""


class UserError(Exception):
    """Bad input from the user: the message is the whole story, one line, no traceback. Several problems found in
    one pass (every bad spec of a folder) are one error of several lines, each printed as an `error:` line."""

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines) or [""]


class SpecError(UserError):
    pass


class DataError(UserError):
    pass
