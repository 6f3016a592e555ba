"""Errors and warnings of the data layer, in a module of their own so every data module can raise them."""

import sys
import warnings


class DataError(ValueError):
    """An image or mask cannot be used; the message names the file."""


class UnreadableFileError(DataError):
    """An image or mask file is missing, truncated or cannot be decoded (``data.on_bad_image`` may skip it)."""


class DataWarning(UserWarning):
    """Something about the data that may be wrong (a skipped file, suspicious mask values); the message names
    the file. ``print_data_warnings`` shows it as one ``warning: ...`` line."""


def print_data_warnings() -> None:
    """Show ``DataWarning``s as one line on stderr, without Python's category and source line; other
    warnings keep the default format."""
    if getattr(warnings.showwarning, "shows_data_warnings", False):
        return
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            (file or sys.stderr).write(f"warning: {message}\n")
        else:
            default(message, category, filename, lineno, file, line)

    show.shows_data_warnings = True
    warnings.showwarning = show
