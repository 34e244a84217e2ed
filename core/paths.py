"""Where shared inputs live. Tests, benchmarks and demos read ../shared through these, overridable by
environment variables so CI and other checkouts can point elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """Recorded market data (../shared/data); override with MOE_SHARED_DATA."""
    return Path(os.environ.get("MOE_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def kronos_fixture_dir() -> Path:
    """Kronos compatibility fixture (../shared/kronos/fixture); override with MOE_KRONOS_FIXTURE."""
    return Path(
        os.environ.get("MOE_KRONOS_FIXTURE", PROJECT_ROOT.parent / "shared" / "kronos" / "fixture")
    )
