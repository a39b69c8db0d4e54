"""Snapshots of the console screens (pytest-textual-snapshot).

Deterministic: fixed data, a fixed clock (so ages and expiry never move), and
XID times shown in UTC. Update with `pytest tests/test_console_snapshots.py
--snapshot-update` and look at the SVGs under tests/__snapshots__/ before
committing them.
"""

from __future__ import annotations

from typing import Any

import pytest

from console.ui.app import GantryApp
from tests.console_fixtures import FIXED, cluster_store, targets_for

pytestmark = pytest.mark.usefixtures("utc")  # times on screen in UTC


def make_app() -> GantryApp:
    store = cluster_store()
    return GantryApp(
        targets_for(store),
        store=store,
        connect=False,
        clock=lambda: FIXED,
        refresh_interval_s=0.1,
        cluster_name="train-a",
    )


def test_cluster_screen_80x24(snap_compare: Any) -> None:
    assert snap_compare(make_app(), terminal_size=(80, 24))


def test_cluster_screen_160x48(snap_compare: Any) -> None:
    # The cursor on the lost node: its error shows on the bottom line.
    assert snap_compare(make_app(), press=["down", "down", "down"], terminal_size=(160, 48))


def test_node_screen_120x40(snap_compare: Any) -> None:
    # node-02: a GPU that fails to read and XID events.
    assert snap_compare(make_app(), press=["down", "down", "enter"], terminal_size=(120, 40))
