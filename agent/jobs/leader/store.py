"""The leader's reads and writes of its jobs in the journal: each job and attempt state
change is an edge of its table (agent.jobs.leader.states), legal-checked, and written
once, in one transaction with the event that tells it. Also the peers a job was
submitted with (their tokens, in a private file beside the job's) and the one-time
import of the job.pb files that leaders before journal schema 4 kept."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

from gantry.v1 import agent_service_pb2, job_pb2

from agent.jobs.event_bus import EventBus
from agent.jobs.journal import AttemptRow, Journal
from agent.jobs.leader.led_job import Outcome
from agent.jobs.leader.preemption import is_preempted
from agent.jobs.leader.states import (
    AttemptEdge,
    JobEdge,
    JobState,
    transition_attempt,
    transition_job,
)

log = logging.getLogger("gantry.agent")

PEERS_FILE = "peers.json"
OLD_JOB_FILE = "job.pb"  # what leaders before journal schema 4 kept instead
Told: TypeAlias = "tuple[job_pb2.JobEventKind, str]"  # an event's kind and message
EK_SUCCEEDED = job_pb2.JOB_EVENT_KIND_SUCCEEDED
EK_STOPPED = job_pb2.JOB_EVENT_KIND_STOPPED
_PEER_FIELDS = ("name", "address", "token", "ssh", "token_file")


class LeaderStore:
    """The jobs this node leads, in its journal."""

    def __init__(
        self,
        node_name: str,
        journal: Journal,
        bus: EventBus,
        root: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_name = node_name
        self.journal = journal
        self.bus = bus
        self.root = root
        self.clock = clock

    # -- reads ------------------------------------------------------------------
    def job(self, name: str) -> job_pb2.Job:
        job = self.journal.job_pb(name)
        if job is None:
            raise KeyError(name)
        for attempt in job.attempts:
            # The journal keeps no flag of its own: a preempted attempt's reason says so.
            attempt.preempted = is_preempted(attempt.reason)
        return job

    def state(self, name: str) -> int:
        row = self.journal.get_job(name)
        return row.state if row is not None else JobState.NEW

    def spec(self, name: str) -> job_pb2.JobSpec:
        row = self.journal.get_job(name)
        if row is None:
            raise KeyError(name)
        return row.spec

    def restarts_used(self, name: str) -> int:
        row = self.journal.get_job(name)
        return row.restarts_used if row is not None else 0

    def last_attempt(self, name: str) -> AttemptRow | None:
        attempts = self.journal.attempts(name)
        return attempts[-1] if attempts else None

    def led_jobs(self) -> list[str]:
        """The jobs submitted to this node (its supervisor's rows name it leader too, but
        only a submission leaves the peers' file)."""
        names = self.journal.job_names(leader=self.node_name)
        return [n for n in names if (self.root / n / PEERS_FILE).exists()]

    def peers(self, name: str) -> dict[str, agent_service_pb2.PeerAgent]:
        path = self.root / name / PEERS_FILE
        if not path.exists():
            return {}
        entries = json.loads(path.read_text())
        return {e["name"]: agent_service_pb2.PeerAgent(**e) for e in entries}

    # -- writes: each one an edge ---------------------------------------------------
    def submit(
        self,
        spec: job_pb2.JobSpec,
        peers: Sequence[agent_service_pb2.PeerAgent],
        told: Told,
        details: dict[str, str],
    ) -> None:
        """SUBMIT: a new job, or one replacing an ended job of that name (and its attempts)."""
        transition_job(self.state(spec.name), JobEdge.SUBMIT)
        with self.journal.transaction():
            self.journal.delete_job(spec.name)
            self.journal.upsert_job(
                spec, JobState.PENDING, leader=self.node_name, created=self.clock()
            )
            self.event(spec.name, *told, details=details)
        self._save_peers(spec.name, peers)

    def job_edge(
        self,
        name: str,
        edge: JobEdge,
        reason: str = "",
        told: Told | None = None,
        *,
        restarts_used: int | None = None,
    ) -> None:
        state = transition_job(self.state(name), edge)
        with self.journal.transaction():
            self.journal.set_job_state(name, state, reason)
            if restarts_used is not None:
                self.journal.set_restarts_used(name, restarts_used)
            if told is not None:
                self.event(name, *told)

    def new_attempt(
        self,
        name: str,
        master_port: int,
        excluded: Sequence[str],
        spec: job_pb2.JobSpec | None,
        replaced: Mapping[str, str] | None = None,
    ) -> int:
        """ATTEMPT_STARTING: the job's next attempt, STARTING, with no ranks yet; with
        ``spec``, the job runs that spec from this attempt on; ``replaced``: node -> the
        spare that runs its ranks."""
        state = transition_job(self.state(name), JobEdge.ATTEMPT_STARTING)
        number = (self.journal.latest_attempt(name) or 0) + 1
        row = AttemptRow(
            name,
            number,
            job_pb2.JOB_STATE_STARTING,
            started=self.clock(),
            master_port=master_port,
            excluded_nodes=tuple(excluded),
            replaced_nodes=tuple(sorted((replaced or {}).items())),
        )
        with self.journal.transaction():
            if spec is not None:
                self.journal.set_job_spec(spec)
            self.journal.add_attempt(row)
            self.journal.set_attempt_ranks(name, number, [])
            self.journal.set_job_state(name, state)
        return number

    def attempt_edge(
        self,
        name: str,
        number: int,
        edge: AttemptEdge,
        reason: str = "",
        told: Told | None = None,
        ranks: Sequence[job_pb2.Rank] | None = None,
    ) -> None:
        """The attempt's ``edge``, with its ranks as the leader last saw them; an attempt
        that ends gets its end time."""
        row = self.journal.get_attempt(name, number)
        if row is None:
            raise KeyError(f"{name} attempt {number}")
        state = transition_attempt(row.state, edge)
        ended = self.clock() if edge not in (AttemptEdge.RANKS_STARTED, AttemptEdge.STOP) else None
        with self.journal.transaction():
            self.journal.set_attempt_state(name, number, state, reason or row.reason, ended)
            if ranks is not None:
                self.journal.set_attempt_ranks(name, number, ranks)
            if told is not None:
                self.event(name, *told, attempt=number)

    def attempt_ended(
        self, name: str, attempt: job_pb2.Attempt, outcome: Outcome, reason: str
    ) -> None:
        """A succeeded, stopped or preempted attempt's last edge and, when the job ends (or
        waits) with it, the job's, written together (an operator restart's new attempt
        follows)."""
        with self.journal.transaction():
            if outcome is Outcome.SUCCEEDED:
                edge, job_edge, kind = AttemptEdge.ALL_EXITED_OK, JobEdge.SUCCEED, EK_SUCCEEDED
                self.attempt_edge(name, attempt.number, edge, ranks=attempt.ranks)
            else:
                edge, job_edge, kind = AttemptEdge.STOPPED, JobEdge.STOP, EK_STOPPED
                self.attempt_edge(name, attempt.number, edge, reason, ranks=attempt.ranks)
            if outcome is Outcome.PREEMPTED:
                self.job_edge(name, JobEdge.PREEMPT, reason)  # the watch told it, with figures
            elif outcome is not Outcome.RESTART:
                self.job_edge(name, job_edge, reason, (kind, reason))

    def forget(self, name: str) -> None:
        """The job, its attempts and its peers' file gone (its events stay in the journal)."""
        with self.journal.transaction():
            self.journal.delete_job(name)
        (self.root / name / PEERS_FILE).unlink(missing_ok=True)

    def set_resumed_from(self, name: str, number: int, resumed_from: str) -> None:
        self.journal.set_attempt_resumed_from(name, number, resumed_from)

    def event(
        self,
        name: str,
        kind: job_pb2.JobEventKind,
        message: str,
        attempt: int = 0,
        details: dict[str, str] | None = None,
    ) -> None:
        """Journals one of the leader's own events (``attempt`` 0: the job's latest)."""
        event = job_pb2.JobEvent(
            job_name=name,
            attempt=attempt or self.journal.latest_attempt(name) or 0,
            kind=kind,
            node=self.node_name,
            rank=-1,
            message=message,
            details=details or {},
        )
        event.time.FromNanoseconds(int(self.clock() * 1e9))
        self.bus.publish(event)
        log.info("job %s: %s", name, message)

    def _save_peers(self, name: str, peers: Sequence[agent_service_pb2.PeerAgent]) -> None:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / PEERS_FILE
        # Holds the peers' tokens: private to the agent's user.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        entries = [{f: getattr(p, f) for f in _PEER_FIELDS} for p in peers]
        with os.fdopen(fd, "w") as handle:
            json.dump(entries, handle)

    # -- upgrade ------------------------------------------------------------------
    def import_job_files(self) -> list[str]:
        """Jobs an older leader kept in ``<job>/job.pb``, written into the journal once
        (the file is then renamed ``job.pb.imported``); returns their names."""
        if not self.root.is_dir():
            return []
        names = []
        for path in sorted(self.root.glob(f"*/{OLD_JOB_FILE}")):
            job = job_pb2.Job.FromString(path.read_bytes())
            self._import(job)
            path.replace(path.with_name(OLD_JOB_FILE + ".imported"))
            names.append(job.spec.name)
            log.info("job %s: imported from %s", job.spec.name, path)
        return names

    def _import(self, job: job_pb2.Job) -> None:
        created = job.created.ToNanoseconds() / 1e9 if job.HasField("created") else None
        with self.journal.transaction():
            self.journal.upsert_job(
                job.spec, job.state, job.reason, job.leader, created, job.restarts_used
            )
            for attempt in job.attempts:
                self.journal.save_attempt(
                    AttemptRow(
                        job.spec.name,
                        attempt.number,
                        attempt.state,
                        attempt.reason,
                        _seconds(attempt, "started"),
                        _seconds(attempt, "ended"),
                        attempt.resumed_from,
                        attempt.master_port,
                        tuple(attempt.excluded_nodes),
                        tuple(sorted(attempt.replaced_nodes.items())),
                    )
                )
                self.journal.set_attempt_ranks(job.spec.name, attempt.number, attempt.ranks)


def _seconds(attempt: job_pb2.Attempt, field: str) -> float | None:
    if not attempt.HasField(field):
        return None
    return float(getattr(attempt, field).ToNanoseconds() / 1e9)
