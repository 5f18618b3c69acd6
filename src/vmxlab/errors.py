"""Exceptions shared by every layer."""


class BadInput(ValueError):
    """Input that vmxlab refuses: a malformed file, an unknown name, a value out of
    range.  The message is one line naming the file, field or value; the command
    line prints it and exits with status 2."""
