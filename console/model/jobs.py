"""The console's picture of jobs: plain Python, no Textual, no I/O.

The job session writes into it what the agents say (ListJobs, DescribeJob, the event
stream with every rank's metrics); the job screens read from it. A job of a thousand
ranks reporting once a second must cost little per record: a metric record updates
its rank's latest figures, one bounded per-rank history and one per-step aggregate
(sums, not lists), nothing more.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from gantry.v1 import job_pb2
from gantry.v1.figures import latest_metrics

from console.model.job_steps import (
    OP_PREFIX,
    READ_FIELDS,
    STEP_FIELDS,
    StepAgg,
    last_eval_loss,
    last_known_step,
)
from console.model.job_steps import RankPoint as RankPoint  # re-exported: callers import it here
from console.model.job_steps import ts as ts

EK = job_pb2.JobEventKind
JS = job_pb2.JobState
RS = job_pb2.RankState
METRICS = EK.JOB_EVENT_KIND_METRICS
MAX_STEPS_KEPT = 20_000
MAX_EVENTS_KEPT = 5_000
RANK_HISTORY = 120
# States in which a rank is a problem the operator must see (red on every screen).
BAD_RANK_STATES = frozenset({RS.RANK_STATE_FAILED, RS.RANK_STATE_HUNG})
ACTIVE_JOB_STATES = frozenset(
    {
        JS.JOB_STATE_PENDING,
        JS.JOB_STATE_STARTING,
        JS.JOB_STATE_RUNNING,
        JS.JOB_STATE_RESTARTING,
        JS.JOB_STATE_STOPPING,
        JS.JOB_STATE_PREEMPTED,  # waiting for its node to be back: not ended
    }
)
# Active states in which the job's ranks hold their GPUs (a preempted job's were stopped).
HOLDING_JOB_STATES = ACTIVE_JOB_STATES - {JS.JOB_STATE_PREEMPTED}


@dataclass
class RankLatest:
    rank: int
    node: str
    attempt: int
    metrics: job_pb2.RankMetrics
    time: float
    history: deque[RankPoint] = field(default_factory=lambda: deque(maxlen=RANK_HISTORY))


@dataclass
class JobView:
    name: str
    leader: str
    job: job_pb2.Job
    checkpoints: list[job_pb2.Checkpoint] = field(default_factory=list)
    events: deque[job_pb2.JobEvent] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS_KEPT))
    steps: OrderedDict[int, StepAgg] = field(default_factory=OrderedDict)
    ranks: dict[int, RankLatest] = field(default_factory=dict)
    last_seq: int = 0
    described_at: float = 0.0
    version: int = 0
    eval_loss: tuple[int, float] | None = None  # (step, loss) of the newest evaluation seen

    @property
    def state(self) -> int:
        return int(self.job.state)

    @property
    def spec(self) -> job_pb2.JobSpec:
        return self.job.spec

    def latest_attempt(self) -> job_pb2.Attempt | None:
        return self.job.attempts[-1] if self.job.attempts else None

    def rank_rows(self) -> list[tuple[job_pb2.Rank, RankLatest | None]]:
        """The latest attempt's ranks, each with its newest metric record of that attempt."""
        attempt = self.latest_attempt()
        if attempt is None:
            return []
        rows = []
        for rank in sorted(attempt.ranks, key=lambda r: r.rank):
            latest = self.ranks.get(rank.rank)
            if latest is not None and latest.attempt != attempt.number:
                latest = None
            rows.append((rank, latest))
        return rows

    def bad_nodes(self) -> set[str]:
        """Nodes with a failed or hung rank in the latest attempt (a lost agent is the
        cluster store's to tell)."""
        attempt = self.latest_attempt()
        if attempt is None:
            return set()
        return {r.node for r in attempt.ranks if r.state in BAD_RANK_STATES}

    def nodes(self) -> list[str]:
        return [n.node for n in self.job.spec.nodes]

    def newest_time(self) -> float:
        """When this job last did something new: its latest attempt's start, else its
        submission."""
        attempt = self.latest_attempt()
        started = ts(attempt.started) if attempt is not None else 0.0
        return max(started, ts(self.job.created))

    def last_step(self) -> int:
        """The newest step reported: from the metric stream when this job is followed,
        else from the ranks' last metrics in the leader's description."""
        if self.steps:
            return next(reversed(self.steps))
        return last_known_step(self.job) or 0  # a stopped or resumed attempt's 0 is not it

    def last_eval(self) -> tuple[int, float] | None:
        """(step, loss) of the newest evaluation: from the metric stream, else the
        leader's description."""
        described = last_eval_loss(self.job)
        if self.eval_loss is None or (described is not None and described[0] > self.eval_loss[0]):
            return described
        return self.eval_loss

    def step_series(self, name: str, how: str = "mean", last: int = 0) -> list[tuple[int, float]]:
        """(step, value) of a per-step aggregate, oldest first (`last`: only that many)."""
        steps: Iterable[StepAgg] = self.steps.values()
        if last:
            steps = list(islice(reversed(self.steps.values()), last))[::-1]
        out = []
        for agg in steps:
            value = agg.mean(name) if how == "mean" else agg.total(name)
            if value is not None:
                out.append((agg.step, value))
        return out

    def collective_ops(self, last: int = 0) -> list[str]:
        """The collectives timed in the newest `last` steps (all when 0), by name."""
        steps: Iterable[StepAgg] = self.steps.values()
        if last:
            steps = islice(reversed(self.steps.values()), last)
        ops: set[str] = set()
        for agg in steps:
            ops.update(k[len(OP_PREFIX) :] for k in agg.counts if k.startswith(OP_PREFIX))
        return sorted(ops)

    def time_series(
        self, name: str, bucket_s: float, now: float, buckets: int, how: str = "mean"
    ) -> list[float | None]:
        """The aggregate over wall time: `buckets` buckets of `bucket_s` ending at `now`,
        each the mean of the steps that ended in it (None where no step did)."""
        sums = [0.0] * buckets
        counts = [0] * buckets
        start = now - bucket_s * buckets
        for agg in reversed(self.steps.values()):
            if agg.time < start:
                break
            value = agg.mean(name) if how == "mean" else agg.total(name)
            if value is None:
                continue
            i = min(buckets - 1, int((agg.time - start) / bucket_s))
            sums[i] += value
            counts[i] += 1
        return [s / c if c else None for s, c in zip(sums, counts, strict=True)]


class JobsStore:
    """Every job the agents lead, by name; `version` moves on any change."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobView] = {}
        self.version = 0
        # Moves with jobs, attempts, ranks and events, not with metric records: what
        # the cluster screen's node marks depend on.
        self.structure_version = 0
        self.errors: list[str] = []

    def __iter__(self) -> Iterator[JobView]:
        return iter(sorted(self._jobs.values(), key=lambda j: (ts(j.job.created), j.name)))

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, name: str) -> JobView | None:
        return self._jobs.get(name)

    def _touch(self, view: JobView) -> None:
        self.version += 1
        view.version = self.version

    # -- writing -------------------------------------------------------------------

    def set_listing(self, jobs: Iterable[tuple[str, job_pb2.Job]], errors: list[str]) -> None:
        """ListJobs over every agent: (leader node, job). Jobs no agent lists any more
        are kept (an agent may be down), only updated when someone answers."""
        self.errors = list(errors)
        for leader, job in jobs:
            self.apply_job(leader, job)
        self.version += 1

    def apply_job(
        self,
        leader: str,
        job: job_pb2.Job,
        checkpoints: list[job_pb2.Checkpoint] | None = None,
        now: float = 0.0,
    ) -> JobView:
        name = job.spec.name
        view = self._jobs.get(name)
        if view is None:
            view = self._jobs[name] = JobView(name=name, leader=leader, job=job)
        else:
            view.job = job
            view.leader = leader
        if checkpoints is not None:
            # A folder with no step (step -1: a tokenizer, a config) is no resume point.
            view.checkpoints = sorted((c for c in checkpoints if c.step >= 0), key=lambda c: c.step)
            view.described_at = now
        self._touch(view)
        self.structure_version += 1
        return view

    def forget(self, name: str) -> None:
        """Drops a job its leader has forgotten (a listing keeps jobs no agent lists)."""
        if self._jobs.pop(name, None) is not None:
            self.version += 1
            self.structure_version += 1

    def apply_event(self, event: job_pb2.JobEvent) -> bool:
        """One event of the leader's stream; False for one already held (a replay)."""
        return bool(self.apply_events((event,)))

    def apply_events(self, events: Iterable[job_pb2.JobEvent]) -> list[job_pb2.JobEvent]:
        """Events of the leader's stream in seq order (a batch); returns those applied
        (not already held). The views they touch move on once for the batch."""
        applied: list[job_pb2.JobEvent] = []
        touched: dict[str, JobView] = {}
        structure = False
        jobs = self._jobs
        for event in events:
            view = jobs.get(event.job_name)
            if view is None or event.seq <= view.last_seq:
                continue
            view.last_seq = event.seq
            if event.kind == METRICS:
                self._apply_metrics(view, event)
            else:
                view.events.append(event)
                structure = True
            touched[view.name] = view
            applied.append(event)
        if structure:
            self.structure_version += 1
        for view in touched.values():
            self._touch(view)
        return applied

    def _apply_metrics(self, view: JobView, event: job_pb2.JobEvent) -> None:
        m = event.metrics
        # One look at each figure (a record costs tens of microseconds at most: a
        # thousand ranks send a thousand a second).
        has = m.HasField
        values = {name: float(getattr(m, name)) for name in READ_FIELDS if has(name)}
        get = values.get
        t = ts(m.time) or ts(event.time)
        step = int(m.step)
        if has("eval_loss"):
            at = int(m.eval_step) if has("eval_step") else step
            if view.eval_loss is None or at >= view.eval_loss[0]:
                view.eval_loss = (at, m.eval_loss)
        latest = view.ranks.get(event.rank)
        if latest is None:
            latest = view.ranks[event.rank] = RankLatest(
                event.rank, event.node, event.attempt, m, t
            )
        else:
            if "loss" not in values and latest.metrics.HasField("loss"):
                # A script that logs its loss every N steps while its progress moves every
                # step: the row keeps the last loss (and the rest) it was told.
                m = latest_metrics(latest.metrics, m)
            latest.node, latest.attempt, latest.metrics, latest.time = (
                event.node,
                event.attempt,
                m,
                t,
            )
        latest.history.append(
            RankPoint(
                step,
                t,
                get("loss"),
                get("grad_norm"),
                get("loss_scale"),
                get("step_time_s"),
                get("collective_time_s"),
                get("tokens_per_s"),
                dict(m.collective_time_by_group_s) or None,
            )
        )
        steps = view.steps
        agg = steps.get(step)
        if agg is not None and event.attempt > agg.attempt:
            # A resumed attempt repeats the steps after its checkpoint: start them afresh.
            for later in [s for s in steps if s >= step]:
                del steps[later]
            agg = None
        if agg is None:
            agg = steps[step] = StepAgg(step, attempt=event.attempt)
            while len(steps) > MAX_STEPS_KEPT:
                steps.popitem(last=False)
        agg.n += 1
        if t > agg.time:
            agg.time = t
        sums, counts = agg.sums, agg.counts
        for name in STEP_FIELDS:
            value = values.get(name)
            if value is None:
                continue
            if math.isfinite(value):
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + 1
            else:  # NaN / inf: counted, so the chart shows the hole
                bad = name + ":bad"
                counts[bad] = counts.get(bad, 0) + 1
        for op, value in m.collective_time_by_op_s.items():
            if math.isfinite(value):
                name = OP_PREFIX + op
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + 1

    def gpu_owners(self) -> dict[str, list[tuple[str, int, tuple[int, ...]]]]:
        """node -> [(job, rank, gpu indices)] for the ranks of every active job's latest
        attempt (GPU indices empty on CPU nodes)."""
        owners: dict[str, list[tuple[str, int, tuple[int, ...]]]] = {}
        for view in self._jobs.values():
            if view.state not in HOLDING_JOB_STATES:
                continue
            attempt = view.latest_attempt()
            if attempt is None:
                continue
            for rank in attempt.ranks:
                owners.setdefault(rank.node, []).append(
                    (view.name, rank.rank, tuple(rank.gpu_indices))
                )
        return owners

    def bad_nodes(self) -> set[str]:
        """Nodes with a failed or hung rank in any job's latest attempt."""
        out: set[str] = set()
        for view in self._jobs.values():
            out |= view.bad_nodes()
        return out

    def current_faults(self) -> dict[str, list[tuple[JobView, job_pb2.Rank]]]:
        """node -> (job, rank) for every failed or hung rank of a job current on that
        node, the newest job first: a job is current on a node while it is active, or
        while it is the newest job there and failed. An older job's failure is history,
        not a reason to show the node red or to restart that job from it."""
        newest: dict[str, tuple[float, str]] = {}
        for view in self._jobs.values():
            attempt = view.latest_attempt()
            for rank in attempt.ranks if attempt else ():
                when = (view.newest_time(), view.name)
                if when > newest.get(rank.node, (-1.0, "")):
                    newest[rank.node] = when
        out: dict[str, list[tuple[JobView, job_pb2.Rank]]] = {}
        for view in sorted(self._jobs.values(), key=lambda v: (v.newest_time(), v.name)):
            attempt = view.latest_attempt()
            active = view.state in ACTIVE_JOB_STATES
            for rank in attempt.ranks if attempt else ():
                if rank.state not in BAD_RANK_STATES:
                    continue
                is_newest = newest.get(rank.node, (0.0, ""))[1] == view.name
                if active or (is_newest and view.state == JS.JOB_STATE_FAILED):
                    out.setdefault(rank.node, []).insert(0, (view, rank))
        return out
