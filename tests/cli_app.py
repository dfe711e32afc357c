"""A LightningCLI app for the subprocess tests; refuses every non-loopback connection."""
import sys

from lamin_lightning.testing import NetworkGuard

guard = NetworkGuard().install()

from lightning.pytorch.cli import LightningCLI  # noqa: E402

from lamin_lightning import SaveConfigCallback  # noqa: E402
from lamin_lightning.testing import TinyData, TinyModel  # noqa: E402

if __name__ == "__main__":
    LightningCLI(TinyModel, TinyData, save_config_callback=SaveConfigCallback)
    if guard.attempts:
        sys.exit(f"network calls attempted: {guard.attempts}")
