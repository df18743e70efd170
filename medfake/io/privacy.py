"""De-identification: scan ids are salted hashes, never DICOM identifiers or folder names.

The salt lives in ``.medfake/salt`` under the working directory (created once, never logged) or
comes from ``MEDFAKE_ID_SALT``; the same salt gives the same ids, so manifests stay comparable.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

SALT_FILE = Path(".medfake") / "salt"


def id_salt() -> str:
    env = os.environ.get("MEDFAKE_ID_SALT")
    if env:
        return env
    if SALT_FILE.is_file():
        return SALT_FILE.read_text().strip()
    SALT_FILE.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(16)
    tmp = SALT_FILE.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(salt)
    os.replace(tmp, SALT_FILE)
    return SALT_FILE.read_text().strip()


def deidentify(*parts: object, salt: str | None = None, length: int = 12) -> str:
    """A stable pseudonym (hex) for a scan key such as a SeriesInstanceUID or (experiment, uuid)."""
    salt = id_salt() if salt is None else salt
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(f"{salt}\x1e{text}".encode()).hexdigest()[:length]
