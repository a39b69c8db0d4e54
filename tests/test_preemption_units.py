"""Preemption's pieces without agents: the notice sources (a real file, a real HTTP server on
127.0.0.1), the leader's pure rules (grace, when a node is back, counting the ranks'
answers), the node's request files and answers, and the console's cost and text."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from gantry.v1 import job_pb2

from agent.jobs.journal import RankRow
from agent.jobs.leader.policy import node_back, preemption_deadline
from agent.jobs.leader.preemption import Preempting, is_preempted
from agent.jobs.metrics_records import Record, RecordKind
from agent.jobs.node.checkpoint_asks import CheckpointAsks, request_file
from agent.jobs.node.live_rank import EventBatch
from agent.rank.checkpoint_request import CheckpointRequests
from agent.telemetry.preemption import (
    FileNotice,
    NoticeSpecError,
    PreemptionNotice,
    SigtermNotice,
    UrlNotice,
    first_notice,
    parse_deadline,
    parse_notice_spec,
    parse_url_answer,
)
from console.model.cost import job_cost
from console.model.jobs import JobsStore
from console.net.cluster_file import NodeTarget
from console.net.jobs_client import LedJob
from console.verbs.jobs_format import job_text

EK = job_pb2.JobEventKind
JS = job_pb2.JobState
RS = job_pb2.RankState
T0 = 1_700_000_000.0


# -- the sources -------------------------------------------------------------------------


def test_deadlines_and_metadata_answers() -> None:
    assert parse_deadline("1700000030\n") == 1700000030.0
    assert parse_deadline("2023-11-14T22:14:20Z") == 1700000060.0
    assert parse_deadline('{"action": "terminate", "time": "2023-11-14T22:14:20Z"}') == 1700000060.0
    assert parse_deadline('{"deadline": 5}') == 5.0
    assert parse_deadline("") is None and parse_deadline("soon") is None
    assert parse_url_answer(200, "TRUE") == (True, None)  # GCE
    assert parse_url_answer(200, "FALSE") == (False, None)
    assert parse_url_answer(404, "") == (False, None)  # AWS: nothing scheduled
    aws = '{"action": "terminate", "time": "2023-11-14T22:14:20Z"}'
    assert parse_url_answer(200, aws) == (True, 1700000060.0)
    assert parse_url_answer(200, "<html>") == (False, None)


def test_notice_specs() -> None:
    assert isinstance(parse_notice_spec("sigterm"), SigtermNotice)
    assert isinstance(parse_notice_spec("file:/tmp/x"), FileNotice)
    assert isinstance(parse_notice_spec("url:http://127.0.0.1:1/p"), UrlNotice)
    for bad in ("file:", "url:ftp://x", "gcp", ""):
        with pytest.raises(NoticeSpecError, match="sigterm, file:PATH or url:"):
            parse_notice_spec(bad)


def test_a_notice_file_appearing_is_a_notice_with_its_deadline(tmp_path: Path) -> None:
    path = tmp_path / "notice"

    async def go() -> object:
        source = FileNotice(path, poll_s=0.02)
        waiting = asyncio.create_task(source.wait())
        await asyncio.sleep(0.1)
        assert not waiting.done()  # no file, no notice
        path.write_text("1700000030")
        return await asyncio.wait_for(waiting, 5)

    notice = asyncio.run(go())
    assert notice.source == f"file:{path}" and notice.deadline == 1700000030.0  # type: ignore[attr-defined]


class _Metadata(BaseHTTPRequestHandler):
    answers: list[tuple[int, str]] = []
    headers_seen: list[str] = []

    def do_GET(self) -> None:
        status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        self.headers_seen.append(self.headers.get("Metadata-Flavor", ""))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metadata() -> Iterator[tuple[str, type[_Metadata]]]:
    handler = type("Handler", (_Metadata,), {"answers": [], "headers_seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield (
        f"http://127.0.0.1:{server.server_address[1]}/computeMetadata/v1/instance/preempted",
        handler,
    )
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("answers", "deadline"),
    [
        ([(200, "FALSE"), (200, "FALSE"), (200, "TRUE")], None),  # GCE
        (
            [(404, "not found"), (200, '{"action": "stop", "time": "2023-11-14T22:14:20Z"}')],
            1700000060.0,
        ),
    ],
    ids=["gce", "aws"],
)
def test_a_metadata_url_polled_until_it_says_preempted(
    metadata: tuple[str, type[_Metadata]], answers: list[tuple[int, str]], deadline: float | None
) -> None:
    url, handler = metadata
    handler.answers.extend(answers)
    notice = asyncio.run(asyncio.wait_for(UrlNotice(url, poll_s=0.02).wait(), 10))
    assert notice.source == f"url:{url}" and notice.deadline == deadline
    assert len(handler.headers_seen) == len(answers)
    assert set(handler.headers_seen) == {"Google"}


def test_an_unreachable_url_is_no_notice() -> None:
    async def go() -> bool:
        task = asyncio.create_task(
            UrlNotice("http://127.0.0.1:9/x", poll_s=0.02, timeout_s=0.2).wait()
        )
        await asyncio.sleep(0.3)
        done = task.done()
        task.cancel()
        return done

    assert asyncio.run(go()) is False


def test_the_first_notice_of_several_sources_is_handed_on_once(tmp_path: Path) -> None:
    got: list[str] = []

    async def on_notice(notice: object) -> None:
        got.append(notice.source)  # type: ignore[attr-defined]

    async def go() -> None:
        sigterm = SigtermNotice()
        task = asyncio.create_task(
            first_notice([FileNotice(tmp_path / "n", 0.02), sigterm], on_notice)
        )
        await asyncio.sleep(0.05)
        sigterm.received()
        await asyncio.wait_for(task, 5)

    asyncio.run(go())
    assert got == ["sigterm"]


# -- the leader's rules --------------------------------------------------------------------


def test_the_grace_is_the_specs_or_30_s_or_the_instances_own_deadline() -> None:
    policy = job_pb2.PreemptionPolicy()
    assert preemption_deadline(policy, T0, None) == T0 + 30
    assert preemption_deadline(job_pb2.PreemptionPolicy(grace_s=90), T0, None) == T0 + 90
    assert preemption_deadline(policy, T0, T0 + 20) == T0 + 20  # the instance goes first
    assert preemption_deadline(policy, T0, T0 - 5) == T0 + 30  # a deadline passed: ignored


def test_a_preempted_node_is_back_once_it_went_away_or_the_settle_time_is_over() -> None:
    assert not node_back(answers=True, went_away=False, now=T0, settle_until=T0 + 60)
    assert node_back(answers=True, went_away=True, now=T0, settle_until=T0 + 60)
    assert node_back(answers=True, went_away=False, now=T0 + 60, settle_until=T0 + 60)
    assert not node_back(answers=False, went_away=True, now=T0 + 99, settle_until=T0)


def notice(node: str, request: str, rank: int, deadline: str = "") -> job_pb2.JobEvent:
    details = {"source": "file:/n", "request": request}
    if deadline:
        details["deadline"] = deadline
    return job_pb2.JobEvent(
        kind=EK.JOB_EVENT_KIND_PREEMPTION_NOTICE, node=node, rank=rank, details=details
    )


def answer(request: str, rank: int, step: int) -> job_pb2.JobEvent:
    details = {"request": request, "answered": "true", "tag": f"step{step}", "step": str(step)}
    return job_pb2.JobEvent(kind=EK.JOB_EVENT_KIND_PREEMPTION_NOTICE, rank=rank, details=details)


def test_every_ranks_answer_is_counted_and_the_reason_says_what_was_saved() -> None:
    policy = job_pb2.PreemptionPolicy(grace_s=10)
    ranks = [job_pb2.Rank(rank=r, state=RS.RANK_STATE_RUNNING) for r in range(3)]
    assert Preempting.first(answer("p1", 0, 5), policy, T0) is None
    p = Preempting.first(notice("node-b", "p1", 1, f"{T0 + 4}"), policy, T0)
    assert p is not None and p.deadline == T0 + 4
    p.add(answer("p1", 0, 7), policy, T0 + 1)
    p.add(answer("other", 1, 7), policy, T0 + 1)  # not this preemption's request
    assert not p.complete(ranks)
    # A second node's notice joins it: its request's answers count too.
    assert p.add(notice("node-c", "p2", 2), policy, T0 + 1) == "p2"
    p.add(answer("p2", 2, 7), policy, T0 + 2)
    p.add(answer("p1", 1, 7), policy, T0 + 2)
    assert p.complete(ranks)
    reason = p.reason(ranks, T0 + 2.5)
    assert reason == (
        "preempted: node-b (file:/n), node-c (file:/n) announced; checkpoint step7 saved by"
        " 3/3 ranks in 2.5 s"
    )
    assert is_preempted(reason) and not is_preempted("stopped by the operator")
    assert p.details(ranks, T0 + 2.5)["notice_to_checkpoint_s"] == "2.500"


def test_a_rank_that_ended_cannot_answer_and_is_not_waited_for() -> None:
    p = Preempting.first(notice("node-b", "p1", 1), job_pb2.PreemptionPolicy(), T0)
    assert p is not None
    ranks = [
        job_pb2.Rank(rank=0, state=RS.RANK_STATE_FAILED),
        job_pb2.Rank(rank=1, state=RS.RANK_STATE_RUNNING),
    ]
    assert not p.complete(ranks)
    p.add(answer("p1", 1, 3), job_pb2.PreemptionPolicy(), T0)
    assert p.complete(ranks)
    assert "saved by 1/2 ranks" in p.reason(ranks, T0 + 1)


# -- the node's request files ------------------------------------------------------------


class _Journal:
    def __init__(self) -> None:
        self.wall_clock = lambda: T0


def rank_row(tmp_path: Path, rank: int = 0) -> RankRow:
    folder = tmp_path / f"rank-{rank}"
    folder.mkdir(exist_ok=True)
    return RankRow(
        "job",
        1,
        rank,
        rank,
        "node-b",
        RS.RANK_STATE_RUNNING,
        "",
        "",
        str(folder / "metrics.jsonl"),
        "",
    )


def test_a_request_is_answered_by_the_checkpoint_record_and_the_ranks_done(tmp_path: Path) -> None:
    asks = CheckpointAsks()
    row = rank_row(tmp_path)
    assert asks.ask(row, "preempt-b-1") and asks.asked(row.key) == "preempt-b-1"
    # What the rank itself reads: the contract's own reader.
    rank_side = CheckpointRequests(request_file(row))
    assert rank_side.pending() == "preempt-b-1"
    emitted: list[job_pb2.JobEvent] = []

    class Rj:
        def emit(
            self,
            batch: EventBatch,
            row: RankRow,
            kind: job_pb2.JobEventKind,
            message: str,
            details: dict[str, str],
        ) -> None:
            event = job_pb2.JobEvent(kind=kind, rank=row.rank, message=message, details=details)
            emitted.append(event)

    batch = EventBatch()
    record = Record(RecordKind.CHECKPOINT, step=12, tag="step12", path="/c/step12")
    asks.settle(Rj(), batch, row, [record], asks.answered_id(row))  # type: ignore[arg-type]
    assert not emitted  # saved, but not answered yet
    rank_side.done("preempt-b-1")
    asks.settle(Rj(), batch, row, [], asks.answered_id(row))  # type: ignore[arg-type]
    assert [dict(e.details) for e in emitted] == [
        {
            "request": "preempt-b-1",
            "answered": "true",
            "tag": "step12",
            "path": "/c/step12",
            "step": "12",
        }
    ]
    assert asks.asked(row.key) is None
    asks.settle(Rj(), batch, row, [record], "preempt-b-1")  # type: ignore[arg-type]
    assert len(emitted) == 1  # answered once


def test_an_answer_without_a_checkpoint_record_is_not_taken(tmp_path: Path) -> None:
    asks = CheckpointAsks()
    row = rank_row(tmp_path)
    asks.ask(row, "p")
    CheckpointRequests(request_file(row)).done("p")
    emitted: list[object] = []

    class Rj:
        def emit(self, *args: object, **kwargs: object) -> None:
            emitted.append(args)

    asks.settle(Rj(), EventBatch(), row, [], asks.answered_id(row))  # type: ignore[arg-type]
    assert not emitted and asks.asked(row.key) == "p"


# -- the console -------------------------------------------------------------------------


def preempted_job(state: int = JS.JOB_STATE_PREEMPTED) -> job_pb2.Job:
    job = job_pb2.Job(state=state)  # type: ignore[arg-type]
    job.spec.name = "spot"
    job.spec.nodes.add(node="node-a", slots=1)
    job.spec.nodes.add(node="node-b", slots=1)
    job.spec.cost.price_per_gpu_hour = 2.0
    job.spec.cost.pricing = "preemptible"
    first = job.attempts.add(number=1, state=JS.JOB_STATE_STOPPED, preempted=True)
    first.reason = (
        "preempted: node-b (sigterm) announced; checkpoint step7 saved by 2/2 ranks in 1.0 s"
    )
    first.started.FromSeconds(int(T0))
    first.ended.FromSeconds(int(T0 + 3600))
    for r in range(2):
        first.ranks.add(rank=r, node=f"node-{'ab'[r]}", gpu_indices=[0], state=RS.RANK_STATE_EXITED)
    job.reason = first.reason
    return job


def test_preemptible_time_is_billed_at_30_percent_and_the_wait_not_at_all() -> None:
    job = preempted_job()
    cost = job_cost(job, T0 + 3600 + 1800, 7, None)
    assert cost.gpu_hours == 2.0 and cost.rate == pytest.approx(0.6)
    assert cost.spent == pytest.approx(1.2)
    assert cost.preempted_hours == pytest.approx(0.5)
    text = cost.summary()
    assert "2.00 GPU-h $1.20" in text and "0.50 h preempted, not billed" in text
    assert "$0.6/GPU-h, 30 % of on-demand $2/GPU-h" in text
    # Resumed: the wait is what lay between the attempts.
    second = job.attempts.add(number=2, state=JS.JOB_STATE_RUNNING)
    second.started.FromSeconds(int(T0 + 3600 + 900))
    job.state = JS.JOB_STATE_RUNNING
    assert job_cost(job, T0 + 9999, 7, None).preempted_hours == pytest.approx(0.25)
    job.spec.cost.pricing = "on-demand"
    assert job_cost(job, T0 + 9999, 7, None).rate == 2.0


def test_the_console_shows_a_preempted_job_and_attempt() -> None:
    job = preempted_job()
    text = job_text(LedJob(NodeTarget("node-a", "127.0.0.1:1", Path("t")), job), [])
    first = text.splitlines()[0]
    assert first.startswith("job spot: preempted (preempted: node-b (sigterm) announced")
    assert "  #1 stopped (preempted): preempted: node-b" in text
    store = JobsStore()
    store.apply_job("node-a", job, [], T0)
    assert store.gpu_owners() == {}  # its ranks were stopped: they hold no GPU


def test_a_broken_source_does_not_silence_the_others() -> None:
    got: list[str] = []

    class Broken:
        name = "broken"

        async def wait(self) -> PreemptionNotice:
            raise RuntimeError("metadata client bug")

    async def on_notice(notice: PreemptionNotice) -> None:
        got.append(notice.source)

    async def go() -> None:
        sigterm = SigtermNotice()
        task = asyncio.create_task(first_notice([Broken(), sigterm], on_notice))
        await asyncio.sleep(0.05)
        assert not task.done()
        sigterm.received()
        await asyncio.wait_for(task, 5)

    asyncio.run(go())
    assert got == ["sigterm"]
