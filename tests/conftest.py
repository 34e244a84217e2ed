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
    skip_gpu = None
    if any(item.get_closest_marker("gpu") for item in items):  # import torch only for GPU tests
        import torch

        if not torch.cuda.is_available():
            skip_gpu = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False")
    for item in items:
        if skip_gpu is not None and item.get_closest_marker("gpu"):
            item.add_marker(skip_gpu)
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


# crypto venues trade 24/7 on a plain UTC grid; stocks/ (session bars, vendor glitches on purpose) is
# tested by the session-aware tests instead
CRYPTO_DIRS = ("binanceus", "bitstamp_coinbase", "freqtrade")


@pytest.fixture(scope="session")
def crypto_candle_files(shared_data: Path) -> list[Path]:
    """Every recorded crypto candle file of the shared data (trades files excluded)."""
    files = sorted(p for d in CRYPTO_DIRS for p in (shared_data / d).glob("*.csv")
                   if not p.name.endswith("-trades.csv"))
    if not files:
        pytest.fail(f"no crypto candle files under {shared_data}")
    return files


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
