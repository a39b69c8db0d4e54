"""A rank's two streams merged for the log screen, and what opening a failure event shows."""

from __future__ import annotations

import pytest
from gantry.v1 import job_pb2

from console.model.event_detail import event_detail
from console.model.log_streams import STDERR, STDOUT, LogMode, RankLogs

EK = job_pb2.JobEventKind


def lines_of(logs: RankLogs, mode: LogMode) -> list[tuple[int, str]]:
    buffer = logs.buffer(mode)
    return [(buffer.tag(i), buffer.line(i)) for i in range(buffer.first_index, buffer.end_index)]


def test_backlogs_are_held_until_both_streams_answered_stdout_first() -> None:
    logs = RankLogs(hold_s=5.0, monotonic=lambda: 0.0)
    logs.add("stderr", ["train.py: error: argument --deepspeed_config: can't open 'ds.json'"])
    assert not logs.settled and len(logs.merged) == 0
    assert len(logs.stderr) == 1  # the stream's own view does not wait
    logs.add("stdout", ["[INFO] starting", "[INFO] args parsed"])
    assert logs.settled
    assert [tag for tag, _ in lines_of(logs, LogMode.MERGED)] == [STDOUT, STDOUT, STDERR]
    logs.add("stderr", ["second"])
    logs.add("stdout", ["third"])
    assert lines_of(logs, LogMode.MERGED)[-2:] == [(STDERR, "second"), (STDOUT, "third")]
    assert [line for _, line in lines_of(logs, LogMode.STDOUT)][-1] == "third"


def test_a_silent_stream_releases_the_backlog_after_the_hold() -> None:
    now = [0.0]
    logs = RankLogs(hold_s=1.0, monotonic=lambda: now[0])
    logs.add("stderr", ["boom"])
    logs.poll()
    assert not logs.settled
    now[0] = 1.0
    logs.poll()
    assert logs.settled and lines_of(logs, LogMode.MERGED) == [(STDERR, "boom")]


def test_a_failing_feed_answers_for_its_stream_and_is_said_once() -> None:
    logs = RankLogs(hold_s=5.0, monotonic=lambda: 0.0)
    logs.failed("stdout", "node-b: unavailable")
    logs.failed("stderr", "node-b: unavailable")
    assert logs.settled
    assert lines_of(logs, LogMode.MERGED) == [(STDOUT, "gantry: node-b: unavailable")]
    assert len(logs.stderr) == 1


def test_the_empty_note_names_the_empty_stream() -> None:
    logs = RankLogs(hold_s=0.0, monotonic=lambda: 0.0)
    assert logs.empty_note(LogMode.MERGED) == "reading the logs…"
    logs.poll()  # the hold is over: nothing came
    assert logs.empty_note(LogMode.MERGED) == "no lines yet on stdout or stderr"
    logs.add("stderr", ["FileNotFoundError: [Errno 2] No such file or directory: 'ds.json'"])
    assert logs.empty_note(LogMode.STDOUT) == "no lines yet on stdout (stderr has 1: press s)"
    assert LogMode.MERGED.next is LogMode.STDOUT and LogMode.STDERR.next is LogMode.MERGED


def failure(**details: str) -> job_pb2.JobEvent:
    event = job_pb2.JobEvent(
        kind=EK.JOB_EVENT_KIND_RANK_FAILED,
        node="node-b",
        rank=3,
        attempt=2,
        message="rank 3: CUDA out of memory (tried 3.39 GiB; 2.40 GiB free)",
    )
    event.details.update(details)
    return event


def test_a_failure_opens_on_its_cause_with_its_last_error_lines() -> None:
    # The last lines of https://github.com/hiyouga/LlamaFactory/issues/7532
    last_lines = "\n".join(
        [
            '  File "/root/anaconda3/envs/llama-factory/lib/python3.10/site-packages/torch/optim/'
            'optimizer.py", line 385, in wrapper',
            "    out = func(*args, **kwargs)",
            "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.39 GiB. GPU 1 "
            "has a total capacity of 79.32 GiB of which 2.40 GiB is free.",
        ]
    )
    detail = event_detail(
        failure(
            cause="CUDA out of memory (tried 3.39 GiB; 2.40 GiB free)",
            reason="CUDA out of memory (tried 3.39 GiB; 2.40 GiB free)",
            last_lines=last_lines,
            signature="cuda_oom",
            severity="critical",
            tried="3.39 GiB",
            free="2.40 GiB",
            gpu="1",
        )
    )
    assert detail.cause == "CUDA out of memory (tried 3.39 GiB; 2.40 GiB free)"
    assert detail.title == "rank failed · rank 3 on node-b · attempt 2"
    assert (detail.signature, detail.severity) == ("cuda_oom", "critical")
    assert detail.facts == [("tried", "3.39 GiB"), ("free", "2.40 GiB"), ("gpu", "1")]
    assert detail.lines == last_lines.splitlines()
    assert detail.seek_line == detail.lines[2]  # the error that ended the rank
    assert (detail.rank, detail.attempt) == (3, 2)


def test_an_alert_opens_on_its_line() -> None:
    line = "[E ProcessGroupNCCL.cpp:737] [Rank 1] Watchdog caught collective operation timeout"
    alert = job_pb2.JobEvent(kind=EK.JOB_EVENT_KIND_ALERT, node="node-a", rank=1, message="x")
    alert.details.update(
        {"alert": "nccl_watchdog_timeout", "cause": "NCCL ALLREDUCE timed out", "line": line}
    )
    detail = event_detail(alert)
    assert (detail.cause, detail.lines, detail.seek_line) == (
        "NCCL ALLREDUCE timed out",
        [line],
        line,
    )


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("rank 3: CUDA out of memory on GPU 0", "cuda_oom"),
        ("rank 3: killed (exit 137)", "host_oom"),
    ],
)
def test_an_old_oom_alert_is_cuda_or_host_by_its_text(message: str, expected: str) -> None:
    event = job_pb2.JobEvent(kind=EK.JOB_EVENT_KIND_ALERT, node="n", rank=3, message=message)
    event.details["alert"] = "oom"
    detail = event_detail(event)
    assert detail.signature == expected
    assert detail.cause == message.removeprefix("rank 3: ")
