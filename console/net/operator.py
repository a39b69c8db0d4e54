"""What the console's keys do to jobs: the same calls as the CLI verbs (`JobsClient`),
each returning one line for the status bar, or raising `JobCommandError`."""

from __future__ import annotations

from typing import Protocol

from gantry.v1 import job_pb2

from console.net.agent_link import AgentLinks
from console.net.cluster_file import NodeTarget
from console.net.jobs_client import JobCommandError, JobsClient

AGENT_RESTART_NEEDS_SSH = "needs the SSH set-up of `gantry up` (not configured for this cluster)"


class AgentRestarter(Protocol):
    """Restarts a node's agent out of band (over SSH: `console.ssh.mode.SshAgents`)."""

    def can_restart(self, node: str) -> str:
        """ "" when the node's agent can be restarted, else why not (one line)."""
        ...

    async def restart(self, node: str) -> str:
        """One line for the status bar; raises an exception whose text says why not."""
        ...


class Operator:
    def __init__(
        self,
        targets: list[NodeTarget],
        client: JobsClient | None = None,
        agents: AgentRestarter | None = None,
        *,
        links: AgentLinks | None = None,
    ) -> None:
        self.client = client or JobsClient(targets, links)
        self.agents = agents

    @property
    def links(self) -> AgentLinks:
        """The links its calls go over (the app's, when it made this operator)."""
        return self.client.links

    async def close(self) -> None:
        """Closes the links it made itself (not ones it was given)."""
        await self.client.close()

    def agent_restart_unavailable(self, node: str) -> str:
        """ "" when the restart dialog may offer (c) for `node`, else why not."""
        if self.agents is None:
            return AGENT_RESTART_NEEDS_SSH
        return self.agents.can_restart(node)

    async def restart_agent(self, node: str) -> str:
        """The node's agent restarted over SSH; its ranks live on and are re-adopted."""
        if self.agents is None:
            raise JobCommandError(AGENT_RESTART_NEEDS_SSH)
        try:
            return await self.agents.restart(node)
        except JobCommandError:
            raise
        except Exception as exc:  # the restarter's own errors are one line already
            raise JobCommandError(str(exc)) from None

    async def restart(
        self,
        name: str,
        *,
        node: str = "",
        exclude: tuple[str, ...] = (),
        include: tuple[str, ...] = (),
        from_checkpoint: str = "",
        spec: job_pb2.JobSpec | None = None,
        replace: dict[str, str] | None = None,
    ) -> str:
        led = await self.client.restart(
            name,
            node,
            list(exclude),
            from_checkpoint,
            spec=spec,
            include=list(include),
            replace=replace,
        )
        what = f" without {', '.join(exclude)}" if exclude else ""
        what += f" with {', '.join(include)} back" if include else ""
        what += "".join(f" with {n}'s ranks on {s}" for n, s in (replace or {}).items())
        what += f" from {from_checkpoint}" if from_checkpoint else ""
        return f"{name}: restart{what} requested (attempt {len(led.job.attempts)} was the last)"

    async def forget(self, name: str) -> str:
        """A finished job removed from its leader (a live one: JobCommandError)."""
        return await self.client.forget(name)

    async def stop(self, name: str, grace_s: float = 10.0) -> str:
        await self.client.stop(name, grace_s)
        return f"{name}: stop requested"
