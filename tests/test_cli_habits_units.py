"""The pure parts of the CLI's habits (issue 16): numbers in JSON, lines safe for a
terminal, long log lines cut (the agent's reader), which attempt, the jobs table's reason
and step, the advisor's scope check, and following until the followed thing ends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gantry.v1 import agent_service_pb2, job_pb2, telemetry_pb2

from agent.jobs.node.logs import MAX_LINE_BYTES, tail_log
from console.model.proto_json import message_json
from console.model.safe_text import safe_line
from console.net.cluster_file import NodeTarget
from console.net.follow import until_ended
from console.net.jobs_client import JobCommandError, LedJob, choose_attempt
from console.verbs.advise import check_scope, job_scope
from console.verbs.jobs_format import (
    event_line,
    job_json,
    job_text,
    jobs_table,
    last_known_step,
)

JS = job_pb2.JobState


def test_message_json_writes_64_bit_integers_as_numbers_and_keeps_the_shape() -> None:
    ckpt = job_pb2.Checkpoint(tag="step200", step=200, size_bytes=25_276_194_816)
    ckpt.saved.FromSeconds(1_700_000_000)
    doc = message_json(ckpt)
    assert doc == {
        "tag": "step200",
        "step": 200,
        "sizeBytes": 25_276_194_816,
        "saved": "2023-11-14T22:13:20Z",
    }
    gpu = telemetry_pb2.GpuSample(index=1, mem_total_bytes=1 << 40)
    gpu.xid_counts[79] = 3  # map<uint64, uint64>: keys stay strings (JSON's), values numbers
    sample = telemetry_pb2.NodeSample(gpus=[gpu])
    doc = message_json(sample)
    assert doc["gpus"][0]["memTotalBytes"] == 1 << 40
    assert doc["gpus"][0]["xidCounts"] == {"79": 3}
    event = job_pb2.JobEvent(seq=12, details={"step": "99"})
    assert message_json(event) == {"seq": 12, "details": {"step": "99"}}  # strings stay
    reply = agent_service_pb2.DescribeJobResponse(checkpoint_bytes=5, checkpoints=[ckpt])
    assert json.loads(json.dumps(message_json(reply)))["checkpoints"][0]["step"] == 200


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text\twith a tab", "plain text\twith a tab"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b]0;new title\x07after", "after"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("bell\x07 back\x08 cr\r", "bell\u2407 back\u2408 cr\u240d"),
        ("\x1bc reset", " reset"),
        ("\x9b2J csi8", " csi8"),
        ("abc\u202edcba", "abc<U+202E>dcba"),
        ("del\x7f", "del\u2421"),
        ("ünïcødé ✓", "ünïcødé ✓"),
    ],
)
def test_safe_line_neutralises_escapes_and_controls(raw: str, shown: str) -> None:
    assert safe_line(raw) == shown
    assert safe_line(shown) == shown  # what it gives is safe already


def test_a_line_over_a_read_is_cut_with_a_marker_not_dropped(tmp_path: Path) -> None:
    log = tmp_path / "rank.log"
    long = 3 * 1024 * 1024
    log.write_bytes(b"first\n" + b"A" * long + b"\r\nlast\n")
    tail = tail_log(str(log), "stdout", 200)
    assert [line.text[:5] for line in tail.lines] == ["AAAAA", "last"]
    cut = tail.lines[0].text
    assert cut == "A" * MAX_LINE_BYTES + f"… [cut: {long - MAX_LINE_BYTES:,} bytes]"
    assert tail.lines[0].offset == 6
    # Followed from the start: the long line once, whole-cut, then on.
    first = tail_log(str(log), "stdout", from_offset=0)
    assert [line.text for line in first.lines] == ["first"]
    second = tail_log(str(log), "stdout", from_offset=first.next_offset)
    assert [line.text for line in second.lines] == [cut]
    third = tail_log(str(log), "stdout", from_offset=second.next_offset)
    assert [line.text for line in third.lines] == ["last"]


def test_a_long_line_still_being_written_waits_for_its_end(tmp_path: Path) -> None:
    log = tmp_path / "rank.log"
    log.write_bytes(b"first\n" + b"B" * (2 * 1024 * 1024))
    chunk = tail_log(str(log), "stdout", from_offset=6)
    assert chunk.lines == [] and chunk.next_offset == 6
    with log.open("ab") as f:
        f.write(b"\nnext\n")
    chunk = tail_log(str(log), "stdout", from_offset=6)
    assert chunk.lines[0].text.endswith(f"[cut: {2 * 1024 * 1024 - MAX_LINE_BYTES:,} bytes]")


def test_a_line_just_over_the_limit_is_cut_and_multibyte_characters_stay_whole(
    tmp_path: Path,
) -> None:
    log = tmp_path / "rank.log"
    text = "é" * MAX_LINE_BYTES  # two bytes each
    log.write_text(f"{text}\nok\n")
    lines = tail_log(str(log), "stdout", 10).lines
    kept, marker = lines[0].text.split("… [cut: ")
    assert kept == "é" * (MAX_LINE_BYTES // 2)
    assert marker == f"{MAX_LINE_BYTES:,} bytes]"
    assert lines[1].text == "ok"


def job_with_attempts(*numbers: int) -> job_pb2.Job:
    job = job_pb2.Job(spec=job_pb2.JobSpec(name="moe"))
    for number in numbers:
        job.attempts.add(number=number, ranks=[job_pb2.Rank(rank=0, node="a")])
    return job


def test_choose_attempt_names_the_attempts_there_are() -> None:
    job = job_with_attempts(1, 2)
    assert choose_attempt(job, 0).number == 2
    assert choose_attempt(job, 1).number == 1
    with pytest.raises(JobCommandError, match=r"job moe has no attempt 9 \(its attempts: 1, 2;"):
        choose_attempt(job, 9)
    with pytest.raises(JobCommandError, match="has no attempt yet"):
        choose_attempt(job_with_attempts(), 0)


def led(job: job_pb2.Job) -> LedJob:
    return LedJob(NodeTarget("node-a", "127.0.0.1:1"), job)


def test_reason_shows_only_for_the_state_it_explains() -> None:
    job = job_with_attempts(1, 2)
    job.attempts[0].reason = "rank 0 failed: CUDA out of memory"
    job.reason = "rank 0 failed: CUDA out of memory"  # left from attempt 1
    job.state = JS.JOB_STATE_RUNNING
    assert "out of memory" not in jobs_table([led(job)])
    assert "out of memory" not in job_text(led(job), []).splitlines()[0]
    job.state = JS.JOB_STATE_FAILED
    assert "out of memory" in jobs_table([led(job)])
    job.state = JS.JOB_STATE_STOPPED
    job.reason = ""
    job.attempts[1].reason = "stopped by the operator"
    assert jobs_table([led(job)]).splitlines()[1].endswith("stopped by the operator")


def test_step_is_the_last_known_one() -> None:
    job = job_with_attempts(1, 2)
    assert last_known_step(job) is None
    job.attempts[0].ranks[0].metrics.step = 200
    assert last_known_step(job) == 200  # attempt 2 has reported nothing yet
    job.attempts[1].ranks[0].metrics.step = 201
    assert last_known_step(job) == 201
    assert jobs_table([led(job)]).splitlines()[1].split()[5] == "201"


def test_a_finding_applies_only_to_the_attempt_and_world_it_was_found_in() -> None:
    job = job_with_attempts(1)
    then = job_scope(job)
    check_scope("moe", "oom", then, job_scope(job))
    job.attempts.add(number=2, ranks=[job_pb2.Rank(rank=0, node="a")])
    with pytest.raises(JobCommandError, match="found in attempt 1 at 1 ranks, and moe is now on"):
        check_scope("moe", "oom", then, job_scope(job))
    grown = job_with_attempts(1)
    grown.attempts[0].ranks.add(rank=1, node="b")
    with pytest.raises(JobCommandError, match="at 2 ranks"):
        check_scope("moe", "oom", then, job_scope(grown))


async def ticks(count: int, pause_s: float, forever: bool) -> AsyncIterator[int]:
    for i in range(count):
        yield i
        await asyncio.sleep(pause_s)
    while forever:
        await asyncio.sleep(3600)


async def test_until_ended_stops_once_quiet_and_ended_and_never_while_live() -> None:
    asks: list[bool] = []

    async def ended() -> bool:
        asks.append(True)
        return len(asks) >= 3  # live for the first two checks

    got = [i async for i in until_ended(ticks(5, 0.0, forever=True), ended, quiet_s=0.05)]
    assert got == [0, 1, 2, 3, 4] and len(asks) == 3
    # A stream that ends by itself ends the follow, with no question asked.
    asks.clear()
    assert [i async for i in until_ended(ticks(2, 0.0, forever=False), ended, 0.05)] == [0, 1]
    assert asks == []


async def test_until_ended_raises_the_streams_error() -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise JobCommandError("node-a: gone")

    async def never() -> bool:
        return False

    with pytest.raises(JobCommandError, match="gone"):
        [i async for i in until_ended(broken(), never, 0.05)]


def test_text_output_quotes_what_ranks_printed_without_its_escapes() -> None:
    job = job_with_attempts(1)
    job.state = JS.JOB_STATE_FAILED
    job.reason = "rank 0 failed: \x1b[31mboom\x1b[0m\x07"
    job.attempts[0].ranks[0].reason = "\x1b]0;title\x07exit 3"
    assert "\x1b" not in jobs_table([led(job)]) and "boom\u2407" in jobs_table([led(job)])
    text = job_text(led(job), [])
    assert "\x1b" not in text and "\x07" not in text and "exit 3" in text
    assert "ranks of attempt #1:" in text.splitlines()  # its table's lines stay lines
    event = job_pb2.JobEvent(attempt=1, rank=0, node="a", message="\x1b[2Jcleared")
    assert event_line(event).endswith(" cleared") and "\x1b" not in event_line(event)


def test_job_says_the_disk_its_checkpoints_use() -> None:
    job = job_with_attempts(1)
    checkpoints = [
        job_pb2.Checkpoint(tag="step10", step=10, size_bytes=1_500_000),
        job_pb2.Checkpoint(tag="step20", step=20, size_bytes=2_500_000, latest=True),
    ]
    assert "checkpoints (2, 4.0 MB on disk):" in job_text(led(job), checkpoints)
    assert job_json(led(job), checkpoints)["checkpoint_bytes"] == 4_000_000
