"""Errors of the data layer, in a module of their own so every data module can raise them."""


class DataError(ValueError):
    """An image or mask cannot be used; the message names the file."""


class UnreadableFileError(DataError):
    """An image or mask file is missing, truncated or cannot be decoded (``data.on_bad_image`` may skip it)."""
