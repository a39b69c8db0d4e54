"""The log screen of one rank as the console opens it: stdout and stderr, each followed
from the rank's agent while the screen is open (the app's `open_logs`)."""

from __future__ import annotations

from functools import partial

from console.model.log_streams import STREAMS, RankLogs
from console.net.job_session import JobsSession
from console.ui.screens.logs import Feed, LogScreen


def rank_log_screen(session: JobsSession | None, name: str, rank: int, attempt: int) -> LogScreen:
    """A log screen fed by both of the rank's streams (none without a session)."""
    logs = RankLogs()
    feeds: list[Feed] = []
    if session is not None:
        for stream in STREAMS:
            feeds.append(
                partial(
                    session.tail_log,
                    name,
                    rank,
                    attempt,
                    partial(logs.add, stream),
                    stream=stream,
                    on_error=partial(logs.failed, stream),
                )
            )
    return LogScreen(f"{name} · rank {rank} · attempt {attempt}", logs, feeds=feeds)
