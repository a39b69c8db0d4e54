"""The job screen and its tabs, one pane each (see screen.py)."""

from console.ui.screens.job.screen import JobScreen

__all__ = ["JobScreen"]
