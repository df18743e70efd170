"""Resolve the ``model.weights`` setting (imagenet | none | <path>) to what a constructor takes.

ImageNet weights always go through the Keras cache and the value ``"imagenet"``: for EfficientNet
a file path instead of "imagenet" silently drops a rescaling layer (DESIGN §6), so a user who
has no network places the file in the cache. Nothing ever falls back silently to random weights.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from medfake.models.registry import Backbone
from medfake.core.errors import UserError

OFFLINE_ENV = "MEDFAKE_OFFLINE"
WEIGHTS_HOST = ("storage.googleapis.com", 443)  # where keras.applications weights live


def cache_dir() -> Path:
    """The folder Keras reads and downloads application weights from (``<keras home>/models``).

    Mirrors Keras: ``$KERAS_HOME`` or ``~/.keras`` (``/tmp/.keras`` when home is not writable),
    and ``get_file`` moves to ``/tmp/.keras`` when that folder is not writable.
    """
    home = os.environ.get("KERAS_HOME")
    if not home:
        user_home = os.path.expanduser("~")
        home = os.path.join(user_home if os.access(user_home, os.W_OK) else "/tmp", ".keras")
    home = os.path.expanduser(home)
    if not os.access(home, os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return Path(home) / "models"


def is_cached(backbone: Backbone) -> bool:
    """True when the backbone's no-top ImageNet file is in the Keras cache."""
    return (cache_dir() / backbone.weights_file).is_file()


def is_offline() -> bool:
    """``MEDFAKE_OFFLINE=1`` or no TCP connection to the weights host within one second."""
    if os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        with socket.create_connection(WEIGHTS_HOST, timeout=1.0):
            return False
    except OSError:
        return True


def resolve_weights(backbone: Backbone, weights: str | None) -> tuple[str | None, str]:
    """Return (value for the backbone constructor, description logged as a param).

    "none" → (None, "none"); a path → (path, "file:<name>"); "imagenet" → ("imagenet",
    "imagenet:<file>") when cached or downloadable, else a UserError saying where to put the file.
    """
    text = "none" if weights is None else str(weights).strip()
    if text.lower() == "none" or not text:
        return None, "none"
    if text.lower() == "imagenet":
        description = f"imagenet:{backbone.weights_file}"
        if is_cached(backbone) or not is_offline():
            return "imagenet", description
        raise UserError(
            f"ImageNet weights for {backbone.name} are not in the Keras cache and there is no network: "
            f"place {backbone.weights_file} (from {backbone.weights_url}) in {cache_dir()}/"
        )
    path = Path(text).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist (model.weights must be imagenet, none or a file path)")
    return str(path), f"file:{path.name}"
