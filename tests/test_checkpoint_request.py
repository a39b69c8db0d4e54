"""The checkpoint-request contract: a request is pending once, until answered; a new id is a
new request; nothing is pending without the file or the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.rank.checkpoint_request import ENV, CheckpointRequests, answered_path


def test_a_request_is_pending_until_done_and_a_new_one_is_new(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_request"
    requests = CheckpointRequests(path)
    assert requests.pending() is None
    path.write_text("preempt-1\n")
    assert requests.pending() == "preempt-1"
    assert requests.pending() == "preempt-1"  # still, until answered
    requests.done("preempt-1")
    assert requests.pending() is None
    assert answered_path(path).read_text().strip() == "preempt-1"
    path.write_text("preempt-2 and more\n")
    assert requests.pending() == "preempt-2 and more"


def test_without_the_variable_nothing_is_ever_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert CheckpointRequests().pending() is None
    monkeypatch.setenv(ENV, str(tmp_path / "req"))
    (tmp_path / "req").write_text("x")
    assert CheckpointRequests().pending() == "x"
