"""Errors about the user's input. ``main`` prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input (paths, files, config values): the message names the culprit and the problem."""
