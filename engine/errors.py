"""Errors meant for the user: one clear line, no traceback."""


class UserError(Exception):
    """A problem with the user's input (a file, a value, a flag).

    The message names the offending value and says what to do. The command line prints it as one
    line and exits non-zero; the dashboard shows it as a message.
    """
