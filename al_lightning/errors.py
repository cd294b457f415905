"""Errors a user fixes (a config key, a file, an answers file): the command line prints their one
line alone and exits with status 2; anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """A problem in what the user gave; the message names the key, file or id and the fix."""
