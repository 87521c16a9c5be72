"""Shared fixtures: the real test material in ../shared/data (skipped, with the reason, if absent)."""

from __future__ import annotations

import os
from pathlib import Path

# See caption/cli.py: spinning OpenMP threads crawl beside DataLoader workers on a 2-core CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real clips, annotations and metric references nobody on the team wrote."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test material not found at {SHARED_DATA} (see DESIGN.md: ../shared/data)")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items) -> None:
    """Start the non-editable install (and the quick demo from it, when that test is selected) in
    the background now: minutes of subprocess work that then overlap the rest of the suite."""
    wanted = [item for item in items if item.nodeid.startswith("tests/test_install.py::")]
    if wanted:
        import test_install

        test_install.start_in_background(demo=any("test_demo_quick" in item.nodeid for item in wanted))
