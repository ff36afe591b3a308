"""Errors that reach the user as one line on stderr and exit code 2 (see ``tokenlm.cli``)."""


class TokenlmError(Exception):
    """Bad input or a missing resource: the message is shown to the user as is, without a traceback."""


class NotBuiltError(TokenlmError):
    """A command whose model or component does not exist yet."""
