"""Errors a user can fix. The CLI prints them as one line and exits non-zero; the message names the
file or key at fault."""


class UserError(Exception):
    """Bad input: a missing or unreadable file, an empty folder, a size mismatch, a bad option."""


class ConfigError(UserError, ValueError):
    """A bad config file, key or value."""


class ImageReadError(UserError, OSError):
    """An image that is missing, empty or cannot be decoded."""
