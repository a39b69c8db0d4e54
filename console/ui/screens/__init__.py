"""Screens of the console. Each is drawn from the `ClusterStore` it is given."""

from __future__ import annotations

from textual.screen import Screen


class StoreScreen(Screen[None]):
    """A screen that shows store data; the app calls `refresh_from_store` after changes.

    The app coalesces store changes and calls this at most once per refresh
    interval, plus once a second so ages ("lost 12s") move on.
    """

    def refresh_from_store(self) -> None:
        raise NotImplementedError
