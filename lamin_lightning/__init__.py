"""Every PyTorch Lightning checkpoint a queryable LaminDB artifact."""

__version__ = "0.1.0"

# Public names load on first use: `import lamin_lightning` stays cheap, and importing `lamin_lightning.events` or
# `lamin_lightning.testing` does not import lamindb (whose settings folder is fixed when it is first imported).
from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ArtifactEvent": "events",
    "ArtifactKind": "events",
    "ArtifactRemovedEvent": "events",
    "ArtifactSavedEvent": "events",
    "ArtifactObserver": "observers",
    "ArtifactPublishingModelCheckpoint": "publishing",
    "save_lightning_features": "features",
    "sync": "publisher",
    "Checkpoint": "checkpoint",
    "SaveConfigCallback": "config",
    "checkpoints": "table",
    "prune": "retention",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .config import SaveConfigCallback
    from .events import ArtifactEvent, ArtifactKind, ArtifactRemovedEvent, ArtifactSavedEvent
    from .features import save_lightning_features
    from .observers import ArtifactObserver
    from .publisher import sync
    from .publishing import ArtifactPublishingModelCheckpoint
    from .table import checkpoints
    from .retention import prune


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lamin_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
