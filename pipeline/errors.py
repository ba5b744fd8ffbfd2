"""Errors a user can cause with bad input; their message is shown as one line."""


class InputError(ValueError):
    """Bad input data, path, vocab or option: the message names the thing and the fix."""
