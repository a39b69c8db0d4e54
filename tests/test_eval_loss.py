"""An evaluation's loss, from what a script prints (a Trainer's eval dict) or writes to its
metrics file, to `gantry job` and the console's job view."""

from __future__ import annotations

from gantry.v1 import job_pb2

from agent.jobs.metrics_records import RecordParser, merge_metrics
from agent.jobs.node.script_logs import ScriptLogParser
from console.model.jobs import JobsStore
from console.verbs.jobs_format import job_text
from tests.test_cli_habits_units import led

EK = job_pb2.JobEventKind


def test_a_trainer_eval_dict_gives_its_loss_at_the_step_it_ran_at() -> None:
    parser = ScriptLogParser(argv=["run_clm.py", "--logging_steps", "10"])
    lines = [
        "{'loss': '2.5', 'grad_norm': '1.0', 'learning_rate': '0.001', 'epoch': '1'}",
        # transformers 5 prints strings; eval_* keys and no loss: an evaluation
        "{'eval_loss': '2.403', 'eval_accuracy': '0.9688', 'eval_runtime': '1.2',"
        " 'eval_samples_per_second': '3.3', 'eval_steps_per_second': '1', 'epoch': '1'}",
    ]
    records = [r for i, line in enumerate(lines) for r in parser.feed("stdout", line, float(i))]
    records += parser.flush(100.0)
    figures = [r.metrics for r in records if r.metrics is not None]
    latest = None
    for m in figures:
        latest = merge_metrics(latest, m)
    assert latest is not None and latest.step == 10
    assert latest.loss == 2.5 and round(latest.eval_loss, 3) == 2.403


def test_a_metrics_record_carries_eval_loss() -> None:
    record = RecordParser().parse('{"kind": "metrics", "step": 40, "eval_loss": 1.75}')
    assert record is not None and record.metrics is not None
    assert record.metrics.step == 40 and record.metrics.eval_loss == 1.75


def job_with(*ranks: job_pb2.RankMetrics) -> job_pb2.Job:
    job = job_pb2.Job(spec=job_pb2.JobSpec(name="moe"), state=job_pb2.JOB_STATE_RUNNING)
    attempt = job.attempts.add(number=1)
    for i, m in enumerate(ranks):
        attempt.ranks.add(rank=i, node="node-a", metrics=m)
    return job


def test_the_console_keeps_the_newest_evaluation_while_steps_go_on() -> None:
    store = JobsStore()
    store.apply_job("node-a", job_with(job_pb2.RankMetrics(step=5)))
    view = store.apply_event  # events of the metric stream, as the console follows a job
    for step, m in (
        (10, job_pb2.RankMetrics(step=10, loss=2.5)),
        (10, job_pb2.RankMetrics(step=10, eval_loss=2.4)),
        (11, job_pb2.RankMetrics(step=11, loss=2.3)),
    ):
        view(
            job_pb2.JobEvent(
                job_name="moe",
                seq=step * 2 + int(m.HasField("eval_loss")),
                attempt=1,
                kind=EK.JOB_EVENT_KIND_METRICS,
                node="node-a",
                rank=0,
                metrics=m,
            )
        )
    job = store.get("moe")
    assert job is not None and job.last_eval() == (10, 2.4)


def test_gantry_job_says_the_newest_evaluation() -> None:
    job = job_with(
        job_pb2.RankMetrics(step=30, loss=2.0, eval_loss=2.2),
        job_pb2.RankMetrics(step=20, loss=2.1, eval_loss=2.6),
    )
    assert "eval loss 2.2 at step 30" in job_text(led(job), []).splitlines()
    assert not any("eval loss" in line for line in job_text(led(job_with()), []).splitlines())


def test_the_evaluation_keeps_its_own_step_while_the_rank_steps_on() -> None:
    # The rank's figures at step 70 still carry the evaluation that ran at 40.
    job = job_with(job_pb2.RankMetrics(step=70, loss=1.9, eval_loss=2.2, eval_step=40))
    assert "eval loss 2.2 at step 40" in job_text(led(job), []).splitlines()
