"""The SQLite journal: schema, round-trips, events, offsets, transactions, protos."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from gantry.v1 import job_pb2

from agent.jobs.journal import (
    FILE_NAME,
    SCHEMA_VERSION,
    AttemptRow,
    Journal,
    JournalError,
    RankRow,
    rank_to_pb,
)
from agent.jobs.journal_schema import MIGRATIONS, statements


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path)
    yield j
    j.close()


def spec(name: str = "moe") -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        name=name,
        nodes=[job_pb2.NodeSlots(node="n1", slots=2)],
        command=["python", "train.py"],
        env={"NCCL_DEBUG": "INFO"},
        hang_timeout_s=60,
        restart=job_pb2.RestartPolicy(max_restarts=3, backoff_s=5),
    )


def rank_row(job: str = "moe", attempt: int = 1, rank: int = 0, **kw: object) -> RankRow:
    fields: dict[str, object] = dict(
        job=job,
        attempt=attempt,
        rank=rank,
        local_rank=rank,
        node="n1",
        state=job_pb2.RANK_STATE_RUNNING,
        stdout_path=f"/d/{rank}/stdout.log",
        stderr_path=f"/d/{rank}/stderr.log",
        metrics_path=f"/d/{rank}/metrics.jsonl",
        exit_path=f"/d/{rank}/exit_code",
    )
    fields.update(kw)
    return RankRow(**fields)  # type: ignore[arg-type]


def with_attempt(journal: Journal, job: str = "moe", number: int = 1) -> None:
    journal.ensure_job(spec(job))
    journal.add_attempt(AttemptRow(job, number, job_pb2.JOB_STATE_RUNNING, started=100.0))


def test_file_wal_and_schema_version(tmp_path: Path, journal: Journal) -> None:
    assert journal.path == tmp_path / FILE_NAME
    assert journal.schema_version() == SCHEMA_VERSION == 6
    mode = sqlite3.connect(journal.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_reopening_keeps_data_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as j:
        j.upsert_job(spec())
    with Journal.open(tmp_path) as j:
        assert j.job_names() == ["moe"]
    db = sqlite3.connect(tmp_path / FILE_NAME)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(JournalError, match="newer agent"):
        Journal.open(tmp_path)


def test_a_version_1_journal_is_upgraded_keeping_its_ranks(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None)
    for statement in statements(MIGRATIONS[0]):
        db.execute(statement)
    db.execute("PRAGMA user_version=1")
    db.execute(
        "INSERT INTO jobs (name, spec, state, created) VALUES ('moe', ?, 3, 1.0)",
        (spec().SerializeToString(),),
    )
    db.execute("INSERT INTO attempts (job, number, state) VALUES ('moe', 1, 3)")
    db.execute(
        "INSERT INTO ranks (job, attempt, rank, local_rank, node, state, stdout_path, "
        "stderr_path, metrics_path, exit_path) VALUES ('moe', 1, 0, 0, 'n1', 3, 'o', 'e', 'm', 'x')"
    )
    db.close()
    with Journal.open(tmp_path) as j:
        assert j.schema_version() == SCHEMA_VERSION
        row = j.get_rank("moe", 1, 0)
        assert row is not None and row.node == "n1"
        assert (row.phase, row.phase_since) == (0, None)
        j.upsert_rank(replace(row, phase=job_pb2.RANK_PHASE_JOINING, phase_since=5.0))
        again = j.get_rank("moe", 1, 0)
        assert again is not None and again.phase == job_pb2.RANK_PHASE_JOINING
        assert rank_to_pb(again).phase_since.seconds == 5


def test_job_round_trip(journal: Journal) -> None:
    journal.upsert_job(spec(), job_pb2.JOB_STATE_RUNNING, leader="n1", created=123.5)
    row = journal.get_job("moe")
    assert row is not None
    assert row.spec == spec() and row.state == job_pb2.JOB_STATE_RUNNING
    assert (row.leader, row.created, row.restarts_used) == ("n1", 123.5, 0)
    journal.set_job_state("moe", job_pb2.JOB_STATE_FAILED, "rank 1 failed")
    journal.set_restarts_used("moe", 2)
    row = journal.get_job("moe")
    assert row is not None
    assert (row.state, row.reason) == (job_pb2.JOB_STATE_FAILED, "rank 1 failed")
    assert row.restarts_used == 2
    assert journal.get_job("other") is None
    # ensure_job keeps state, refreshes the spec.
    newer = spec()
    newer.hang_timeout_s = 5
    assert not journal.ensure_job(newer)
    row = journal.get_job("moe")
    assert row is not None and row.spec.hang_timeout_s == 5
    assert row.state == job_pb2.JOB_STATE_FAILED
    assert journal.ensure_job(spec("fresh"))


def test_attempts(journal: Journal) -> None:
    journal.ensure_job(spec())
    assert journal.latest_attempt("moe") is None
    first = AttemptRow(
        "moe",
        1,
        job_pb2.JOB_STATE_STARTING,
        started=10.0,
        master_port=29500,
        excluded_nodes=("n3",),
    )
    assert journal.add_attempt(first)
    assert not journal.add_attempt(first)
    journal.add_attempt(AttemptRow("moe", 2, job_pb2.JOB_STATE_STARTING, resumed_from="/c/s10"))
    journal.set_attempt_state("moe", 1, job_pb2.JOB_STATE_FAILED, "rank 0 hung", ended=20.0)
    attempts = journal.attempts("moe")
    assert [a.number for a in attempts] == [1, 2]
    assert attempts[0] == AttemptRow(
        "moe", 1, job_pb2.JOB_STATE_FAILED, "rank 0 hung", 10.0, 20.0, "", 29500, ("n3",)
    )
    assert attempts[1].resumed_from == "/c/s10"
    assert journal.latest_attempt("moe") == 2
    assert journal.get_attempt("moe", 2) == attempts[1]


def test_rank_round_trip_with_metrics(journal: Journal) -> None:
    with_attempt(journal)
    metrics = job_pb2.RankMetrics(step=7, loss=1.5, learning_rate=1e-4)
    metrics.collective_time_by_op_s["all_reduce"] = 0.25
    row = rank_row(
        pid=4242,
        create_time=1234.56,
        gpu_indices=(0,),
        last_heartbeat=99.5,
        last_metrics=metrics,
        metrics_source="file",
    )
    journal.upsert_rank(row)
    back = journal.get_rank("moe", 1, 0)
    assert back == row
    assert back is not None and back.last_metrics == metrics
    journal.upsert_rank(row.__class__(**{**row.__dict__, "exit_code": -9, "state": 7}))
    back = journal.get_rank("moe", 1, 0)
    assert back is not None and (back.exit_code, back.state) == (-9, 7)
    pb = rank_to_pb(back)
    assert (pb.rank, pb.pid, pb.exit_code, list(pb.gpu_indices)) == (0, 4242, -9, [0])
    assert pb.metrics == metrics
    assert pb.last_heartbeat.ToNanoseconds() == 99_500_000_000


def test_ranks_need_their_attempt(journal: Journal) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        journal.upsert_rank(rank_row())


def test_live_ranks(journal: Journal) -> None:
    with_attempt(journal)
    terminal = [job_pb2.RANK_STATE_EXITED, job_pb2.RANK_STATE_FAILED, job_pb2.RANK_STATE_KILLED]
    journal.upsert_rank(rank_row(rank=0, pid=10))
    journal.upsert_rank(rank_row(rank=1, pid=11, state=job_pb2.RANK_STATE_EXITED, exit_code=0))
    # Failed after a hang, still being killed: its exit code is not known yet.
    journal.upsert_rank(rank_row(rank=2, pid=12, state=job_pb2.RANK_STATE_FAILED))
    journal.upsert_rank(rank_row(rank=3, node="n2", pid=13))
    live = journal.live_ranks("n1", terminal)
    assert [r.rank for r in live] == [0, 2]
    assert [r.rank for r in journal.live_ranks(None, terminal)] == [0, 2, 3]
    assert [r.rank for r in journal.ranks("moe", 1)] == [0, 1, 2, 3]


def test_events_sequence_filter_and_round_trip(journal: Journal) -> None:
    metrics = job_pb2.RankMetrics(step=3, loss=2.0)
    first = job_pb2.JobEvent(
        job_name="moe",
        attempt=1,
        kind=job_pb2.JOB_EVENT_KIND_METRICS,
        node="n1",
        rank=1,
        metrics=metrics,
    )
    first.time.FromNanoseconds(1_500_000_000_000_000_000)
    s1 = journal.append_event(first)
    assert first.seq == s1
    other = job_pb2.JobEvent(job_name="other", kind=job_pb2.JOB_EVENT_KIND_SUBMITTED, rank=-1)
    s2 = journal.append_event(other)
    assert other.HasField("time")  # stamped when missing
    failed = job_pb2.JobEvent(
        job_name="moe",
        attempt=1,
        kind=job_pb2.JOB_EVENT_KIND_RANK_FAILED,
        message="rank 0 failed",
        details={"stacks": "Thread 0x1", "exit_code": "-9"},
    )
    s3 = journal.append_event(failed)
    assert s1 < s2 < s3 and journal.last_seq() == s3
    assert [e.seq for e in journal.events_after(0)] == [s1, s2, s3]
    assert [e.seq for e in journal.events_after(s1)] == [s2, s3]
    moe = journal.events_after(0, "moe")
    assert moe == [first, failed]
    assert journal.events_after(0, "moe", limit=1) == [first]
    assert journal.events_after(0, "") == journal.events_after(0)  # "": every job
    assert journal.events_after(0, kinds=[job_pb2.JOB_EVENT_KIND_RANK_FAILED]) == [failed]
    assert journal.events_after(s3) == []
    assert journal.events_after(0, "other")[0].rank == -1


def test_offsets(journal: Journal) -> None:
    assert journal.get_offset("/d/metrics.jsonl") == 0
    journal.set_offset("/d/metrics.jsonl", 120)
    journal.set_offset(Path("/d/metrics.jsonl"), 240)
    assert journal.get_offset(Path("/d/metrics.jsonl")) == 240


def test_transaction_groups_and_rolls_back(journal: Journal) -> None:
    with pytest.raises(RuntimeError), journal.transaction():
        journal.set_offset("/a", 5)
        with journal.transaction():  # joins the outer one
            journal.append_event(job_pb2.JobEvent(job_name="moe"))
        raise RuntimeError("boom")
    assert journal.get_offset("/a") == 0
    assert journal.events_after(0) == []
    with journal.transaction():
        journal.set_offset("/a", 5)
        journal.append_event(job_pb2.JobEvent(job_name="moe"))
    assert journal.get_offset("/a") == 5 and len(journal.events_after(0)) == 1


def test_audit(journal: Journal) -> None:
    first = journal.audit("alice", "stop moe", {"grace_s": "10"}, when=5.0)
    second = journal.audit("bob", "restart n2")
    entries = journal.audit_entries()
    assert [e.id for e in entries] == [second, first]
    assert (entries[1].who, entries[1].what, entries[1].time) == ("alice", "stop moe", 5.0)
    assert entries[1].details == {"grace_s": "10"}


def test_job_pb_with_attempts_and_ranks(journal: Journal) -> None:
    journal.upsert_job(spec(), job_pb2.JOB_STATE_RUNNING, leader="n1", created=50.0)
    journal.add_attempt(AttemptRow("moe", 1, job_pb2.JOB_STATE_FAILED, "hung", 60.0, 70.0))
    journal.add_attempt(AttemptRow("moe", 2, job_pb2.JOB_STATE_RUNNING, master_port=29501))
    journal.upsert_rank(rank_row(attempt=1, rank=0, state=job_pb2.RANK_STATE_FAILED))
    journal.upsert_rank(rank_row(attempt=2, rank=0))
    journal.upsert_rank(rank_row(attempt=2, rank=1))
    job = journal.job_pb("moe")
    assert job is not None
    assert job.spec == spec() and job.leader == "n1" and job.state == job_pb2.JOB_STATE_RUNNING
    assert job.created.ToNanoseconds() == 50_000_000_000
    assert [a.number for a in job.attempts] == [1, 2]
    assert job.attempts[0].reason == "hung" and job.attempts[0].ended.seconds == 70
    assert [r.rank for r in job.attempts[1].ranks] == [0, 1]
    assert job.attempts[0].ranks[0].state == job_pb2.RANK_STATE_FAILED
    assert journal.job_pb("nope") is None
    journal.delete_job("moe")
    assert journal.job_pb("moe") is None and journal.ranks("moe") == []


def test_a_leaders_view_of_every_nodes_ranks_replaces_the_local_ones(journal: Journal) -> None:
    journal.upsert_job(spec(), job_pb2.JOB_STATE_RUNNING, leader="n1", created=50.0)
    journal.add_attempt(AttemptRow("moe", 1, job_pb2.JOB_STATE_FAILED))
    journal.add_attempt(AttemptRow("moe", 2, job_pb2.JOB_STATE_RUNNING))
    journal.upsert_rank(rank_row(attempt=1, rank=0))
    journal.upsert_rank(rank_row(attempt=2, rank=0))
    seen = [
        job_pb2.Rank(rank=0, node="n1", state=job_pb2.RANK_STATE_RUNNING),
        job_pb2.Rank(rank=1, node="n2", state=job_pb2.RANK_STATE_FAILED),
    ]
    journal.set_attempt_ranks("moe", 2, seen[:1])
    journal.set_attempt_ranks("moe", 2, seen)  # the last view wins
    assert journal.attempt_ranks("moe") == {2: seen}
    job = journal.job_pb("moe")
    assert job is not None
    assert [(r.rank, r.node) for r in job.attempts[0].ranks] == [(0, "n1")]  # local rows
    assert list(job.attempts[1].ranks) == seen
    journal.delete_job("moe")
    assert journal.attempt_ranks("moe") == {}


def test_save_attempt_overwrites_and_set_resumed_from(journal: Journal) -> None:
    journal.upsert_job(spec(), leader="n1")
    journal.save_attempt(AttemptRow("moe", 1, job_pb2.JOB_STATE_STARTING, started=1.0))
    journal.upsert_rank(rank_row(attempt=1, rank=0))
    journal.save_attempt(AttemptRow("moe", 1, job_pb2.JOB_STATE_STOPPED, "stopped", 1.0, 2.0))
    journal.set_attempt_resumed_from("moe", 1, "/c/s5")
    assert journal.attempts("moe") == [
        AttemptRow("moe", 1, job_pb2.JOB_STATE_STOPPED, "stopped", 1.0, 2.0, "/c/s5")
    ]
    assert journal.get_rank("moe", 1, 0) is not None  # an overwrite keeps the ranks


def test_a_version_3_journal_gains_the_leader_tables_and_keeps_its_jobs(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None)
    for script in MIGRATIONS[:3]:
        for statement in statements(script):
            db.execute(statement)
    db.execute("PRAGMA user_version=3")
    db.execute(
        "INSERT INTO jobs (name, spec, state, leader, created) VALUES ('moe', ?, 3, 'n1', 1.0)",
        (spec().SerializeToString(),),
    )
    db.close()
    with Journal.open(tmp_path) as j:
        assert j.schema_version() == SCHEMA_VERSION
        assert j.job_names(leader="n1") == ["moe"] and j.job_names(leader="n2") == []
        j.add_attempt(AttemptRow("moe", 1, job_pb2.JOB_STATE_RUNNING))
        j.set_attempt_ranks("moe", 1, [job_pb2.Rank(rank=0, node="n1")])
        assert list(j.attempt_ranks("moe")) == [1]
