"""Job verbs' output: tables for people, JSON for scripts."""

from __future__ import annotations

import time
from typing import Any

from gantry.v1 import job_pb2

from console.model.cost import Cost, job_cost
from console.model.diagnoses import diagnoses, diagnoses_json
from console.model.job_steps import last_eval_loss
from console.model.job_steps import last_known_step as last_known_step  # re-exported
from console.model.proto_json import message_json
from console.model.rank_phase import starting_phase
from console.model.safe_text import safe_line
from console.model.transport import transport_by_node, transport_json
from console.net.jobs_client import LedJob

# The states a reason explains: on any other, an earlier attempt's reason would mislead.
REASONED_STATES = frozenset(
    {job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_STOPPED, job_pb2.JOB_STATE_PREEMPTED}
)


def state_name(value: int) -> str:
    return job_pb2.JobState.Name(value).removeprefix("JOB_STATE_").lower()


def rank_state_name(value: int) -> str:
    return job_pb2.RankState.Name(value).removeprefix("RANK_STATE_").lower()


def _last_known(rank: job_pb2.Rank) -> str:
    return rank_state_name(rank.state) + (f": {rank.reason}" if rank.reason else "")


def job_json(
    led: LedJob,
    checkpoints: list[job_pb2.Checkpoint] | None = None,
    events: list[job_pb2.JobEvent] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "leader": led.leader.name,
        "job": message_json(led.job),
    }
    if checkpoints is not None:
        out["checkpoints"] = [message_json(c) for c in checkpoints]
        out["checkpoint_bytes"] = sum(c.size_bytes for c in checkpoints)  # the disk they use
    if events is not None:
        # The latest attempt's: what NCCL runs over, and what the agents diagnosed.
        attempt = led.job.attempts[-1].number if led.job.attempts else None
        out["transport"] = transport_json(transport_by_node(events, attempt))
        out["diagnoses"] = diagnoses_json(diagnoses(events, attempt))
    cost = cost_now(led.job)
    out["cost"] = {
        "unit": cost.unit,  # "GPU", or "CPU" when the ranks hold no GPU (the hours are CPU-hours)
        "gpu_hours": round(cost.gpu_hours, 4),
        "price_per_gpu_hour": cost.price_per_gpu_hour,
        "spent": round(cost.spent, 2),
        "remaining_gpu_hours": None
        if cost.remaining_gpu_hours is None
        else round(cost.remaining_gpu_hours, 4),
        "remaining": None if cost.remaining is None else round(cost.remaining, 2),
        "pricing": cost.pricing,
        "instance_type": cost.instance_type,
    }
    return out


def cost_now(job: job_pb2.Job) -> Cost:
    """The job's cost from its ranks' last metrics (step, step time) as described."""
    ranks = list(job.attempts[-1].ranks) if job.attempts else []
    step = max((int(r.metrics.step) for r in ranks), default=0)
    times = [r.metrics.step_time_s for r in ranks if r.metrics.HasField("step_time_s")]
    return job_cost(job, time.time(), step, sum(times) / len(times) if times else None)


def shown_reason(job: job_pb2.Job) -> str:
    """The reason for the job's state: only a failed, stopped or preempted job has one."""
    if job.state not in REASONED_STATES:
        return ""
    return job.reason or (job.attempts[-1].reason if job.attempts else "")


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _num(metrics: job_pb2.RankMetrics, name: str, fmt: str) -> str:
    return format(getattr(metrics, name), fmt) if metrics.HasField(name) else "-"


def jobs_table(jobs: list[LedJob]) -> str:
    rows: list[tuple[str, ...]] = [
        ("NAME", "STATE", "LEADER", "ATTEMPT", "RESTARTS", "STEP", "LOSS", "REASON")
    ]
    for led in jobs:
        job = led.job
        attempt = job.attempts[-1] if job.attempts else None
        step = last_known_step(job)
        losses = [r.metrics for r in attempt.ranks if r.metrics.HasField("loss")] if attempt else []
        rows.append(
            (
                job.spec.name,
                state_name(job.state),
                led.leader.name,
                str(len(job.attempts)),
                f"{job.restarts_used}/{job.spec.restart.max_restarts}",
                "-" if step is None else str(step),
                f"{losses[0].loss:.4f}" if losses else "-",
                safe_line(shown_reason(job)),
            )
        )
    return _table(rows)


def job_text(
    led: LedJob,
    checkpoints: list[job_pb2.Checkpoint],
    events: list[job_pb2.JobEvent] | None = None,
) -> str:
    job = led.job
    lines = [
        f"job {job.spec.name}: {state_name(job.state)}"
        + (f" ({shown_reason(job)})" if shown_reason(job) else ""),
        f"leader {led.leader.name} · restarts {job.restarts_used}/{job.spec.restart.max_restarts}"
        f" · nodes {' '.join(f'{n.node}:{n.slots}' for n in job.spec.nodes)}",
        f"cost {cost_now(job).summary()}",
    ]
    evaluated = last_eval_loss(job)
    if evaluated is not None:
        lines.append(f"eval loss {evaluated[1]:.4g} at step {evaluated[0]}")
    lines += ["", "attempts:"]
    for attempt in job.attempts:
        extra = f" resumed from {attempt.resumed_from}" if attempt.resumed_from else ""
        if attempt.excluded_nodes:
            extra += f" excluding {', '.join(attempt.excluded_nodes)}"
        reason = f": {safe_line(attempt.reason)}" if attempt.reason else ""
        state = state_name(attempt.state) + (" (preempted)" if attempt.preempted else "")
        lines.append(f"  #{attempt.number} {state}{extra}{reason}")
    if job.attempts:
        rows: list[tuple[str, ...]] = [
            (
                "RANK",
                "NODE",
                "PID",
                "STATE",
                "PHASE",
                "STEP",
                "LOSS",
                "GRAD NORM",
                "STEP S",
                "TOK/S",
                "REASON",
            )
        ]
        now = time.time()
        for rank in job.attempts[-1].ranks:
            m = rank.metrics
            state, reason = rank_state_name(rank.state), rank.reason
            if rank.HasField("unknown_since"):
                # The leader cannot reach the node: what follows is the last it knew.
                when = rank.unknown_since.ToDatetime()  # as event_line shows times
                state = "unknown"
                reason = f"no word from {rank.node} since {when:%H:%M:%S} (was {_last_known(rank)})"
            rows.append(
                (
                    str(rank.rank),
                    rank.node,
                    str(rank.pid),
                    state,
                    starting_phase(rank, now) or "-",
                    str(m.step),
                    _num(m, "loss", ".4f"),
                    _num(m, "grad_norm", ".3f"),
                    _num(m, "step_time_s", ".3f"),
                    _num(m, "tokens_per_s", ".0f"),
                    reason,
                )
            )
        lines += ["", f"ranks of attempt #{job.attempts[-1].number}:", _table(rows)]
    if events and job.attempts:
        number = job.attempts[-1].number
        nodes = transport_by_node(events, number)
        if nodes:
            lines += ["", "transport (NCCL):"]
            lines += [f"  {name}: {t.text()}" for name, t in sorted(nodes.items())]
        found = diagnoses(events, number)
        if found:
            lines += ["", f"diagnosed in attempt #{number}:"]
            lines += [f"  rank {d.rank} ({d.node}) {d.alert}: {d.cause}" for d in found[-20:]]
    if checkpoints:
        used = sum(c.size_bytes for c in checkpoints)
        lines += ["", f"checkpoints ({len(checkpoints)}, {used / 1e6:.1f} MB on disk):"]
        for c in checkpoints:
            mark = " (latest)" if c.latest else ""
            kind = f"  {c.format}" if c.format else ""
            lines.append(f"  {c.tag}  step {c.step}  {c.size_bytes / 1e6:.1f} MB{kind}{mark}")
    # Reasons and causes quote what ranks printed: no escape sequence reaches the terminal.
    return "\n".join(safe_line(line) for line in "\n".join(lines).split("\n"))


def event_kind_name(value: int) -> str:
    return job_pb2.JobEventKind.Name(value).removeprefix("JOB_EVENT_KIND_").lower()


def event_line(event: job_pb2.JobEvent) -> str:
    when = event.time.ToDatetime().strftime("%H:%M:%S")
    where = event.node + (f"/rank {event.rank}" if event.rank >= 0 else "")
    return safe_line(
        f"{when}  #{event.attempt:<2} {event_kind_name(event.kind):<16} {where:<16} {event.message}"
    )


def event_json(event: job_pb2.JobEvent) -> dict[str, Any]:
    return message_json(event)
