"""What the console's keys do to jobs: the same calls as the CLI verbs (`JobsClient`),
each returning one line for the status bar, or raising `JobCommandError`."""

from __future__ import annotations

from gantry.v1 import job_pb2

from console.cluster_file import NodeTarget
from console.jobs_client import JobsClient


class Operator:
    def __init__(self, targets: list[NodeTarget], client: JobsClient | None = None) -> None:
        self.client = client or JobsClient(targets)

    async def restart(
        self,
        name: str,
        *,
        node: str = "",
        exclude: tuple[str, ...] = (),
        from_checkpoint: str = "",
        spec: job_pb2.JobSpec | None = None,
    ) -> str:
        led = await self.client.restart(name, node, list(exclude), from_checkpoint, spec=spec)
        what = f" without {', '.join(exclude)}" if exclude else ""
        what += f" from {from_checkpoint}" if from_checkpoint else ""
        return f"{name}: restart{what} requested (attempt {len(led.job.attempts)} was the last)"

    async def stop(self, name: str, grace_s: float = 10.0) -> str:
        await self.client.stop(name, grace_s)
        return f"{name}: stop requested"
