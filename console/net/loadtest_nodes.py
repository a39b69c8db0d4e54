"""The cluster's agents as `gantry loadtest --from-nodes` uses them: load test tasks
started, watched and stopped over the console's links (token or mutual TLS, as every task
verb), each error one line naming the node (console.loadtest.cluster_workers.NodeTasks).

    async with open_node_tasks(config) as nodes:
        report = await run_loadtest(config, nodes=nodes)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Self

from gantry.v1 import agent_service_pb2, task_pb2

from console.loadtest.config import LoadTestConfig, LoadTestError
from console.net.cluster_file import ClusterFileError, NodeTarget, load_cluster_file
from console.net.jobs_client import JobCommandError
from console.net.tasks_client import TasksClient

# As the CLI searches (console.cli.DEFAULT_CLUSTER_FILES): $GANTRY_CLUSTER, then these.
CLUSTER_ENV = "GANTRY_CLUSTER"
DEFAULT_CLUSTER_FILES = (Path(".gantry/cluster.yaml"), Path(".gantry/demo/cluster.yaml"))
STOP_GRACE_S = 10.0


def cluster_path(given: Path | None) -> Path:
    """--cluster, else $GANTRY_CLUSTER, else the first default file there is."""
    if given is not None:
        return given
    if os.environ.get(CLUSTER_ENV):
        return Path(os.environ[CLUSTER_ENV])
    found = next((p for p in DEFAULT_CLUSTER_FILES if p.exists()), None)
    if found is None:
        raise LoadTestError("--from-nodes: no cluster file here; give --cluster FILE")
    return found


def _line(node: str, exc: Exception) -> LoadTestError:
    text = str(exc)
    return LoadTestError(text if text.startswith(f"{node}:") else f"{node}: {text}")


class AgentNodeTasks:
    """Load test tasks on the agents of `targets`; closes its links on exit."""

    def __init__(self, targets: list[NodeTarget]) -> None:
        self.client = TasksClient(targets)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the links to the agents."""
        await self.client.close()

    async def start(self, node: str, spec: task_pb2.LoadTestTaskSpec) -> str:
        request = agent_service_pb2.StartTaskRequest(loadtest=spec)
        try:
            started = await self.client.start(node, request)
        except JobCommandError as exc:
            raise _line(node, exc) from None
        return started.task.id

    async def watch(
        self, node: str, task_id: str
    ) -> AsyncIterator[task_pb2.TaskProgress | task_pb2.Task]:
        try:
            target = self.client.target(node)
            async for message in self.client.watch(target, task_id):
                if message.HasField("progress"):
                    yield message.progress
                if message.HasField("task"):
                    yield message.task
        except JobCommandError as exc:
            raise _line(node, exc) from None

    async def stop(self, node: str, task_id: str) -> None:
        with contextlib.suppress(JobCommandError):
            await self.client.stop(task_id, STOP_GRACE_S)


def open_node_tasks(config: LoadTestConfig) -> AgentNodeTasks:
    """The agents of `config.from_nodes`, from the cluster file; LoadTestError (one line)
    for a file that cannot be read or a node it does not name."""
    path = cluster_path(config.cluster)
    try:
        targets = {t.name: t for t in load_cluster_file(path)}
    except ClusterFileError as exc:
        raise LoadTestError(str(exc)) from None
    unknown = [name for name in config.from_nodes if name not in targets]
    if unknown:
        raise LoadTestError(
            f"--from-nodes: {', '.join(unknown)} not in {path} "
            f"(it has {', '.join(sorted(targets)) or 'no nodes'})"
        )
    return AgentNodeTasks([targets[name] for name in config.from_nodes])
