"""Shared fixtures. Real market data comes from ../shared/data (override: MOE_SHARED_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.paths import kronos_fixture_dir, shared_data_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")

OUTPUT_DIR = Path(__file__).resolve().parent.parent / "test-output"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_net = pytest.mark.skip(reason="needs the internet: set MOE_NETWORK_TESTS=1")
    skip_slow = pytest.mark.skip(reason="long run: set MOE_SLOW_TESTS=1")
    for item in items:
        if "network" in item.keywords and os.environ.get("MOE_NETWORK_TESTS") != "1":
            item.add_marker(skip_net)
        if "slow" in item.keywords and os.environ.get("MOE_SLOW_TESTS") != "1":
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.fail(f"shared market data not found at {d} (set MOE_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def kronos_fixture() -> Path:
    d = kronos_fixture_dir()
    if not d.is_dir():
        pytest.fail(f"Kronos fixture not found at {d} (set MOE_KRONOS_FIXTURE)")
    return d


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests leave artefacts worth looking at (screenshots, reports)."""
    OUTPUT_DIR.mkdir(exist_ok=True)
    return OUTPUT_DIR
