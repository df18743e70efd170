"""User-facing errors: one clear line on stderr, exit code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (file, CSV row, DICOM tag, option) — not a bug.

    The CLI prints ``medfake: error: <message>`` and exits with code 2.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class DICOMError(UserError):
    """A DICOM file or series that cannot be used, with the file and the reason."""
