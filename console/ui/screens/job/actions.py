"""What the operator's keys do to a job from its screen: restart, stop, open a rank's
log, resume from a checkpoint, apply a finding's remedy; each confirmed first, the
answer on the status line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gantry.v1 import job_pb2
from rich.text import Text
from textual import work
from textual.widgets import DataTable, OptionList, Static

from console.model.advice import Advice
from console.model.cluster import ClusterStore
from console.model.job_rows import lost_nodes
from console.model.jobs import BAD_RANK_STATES, RS, JobsStore, JobView
from console.model.remedies import RemedyError, plan_remedy
from console.net.jobs_client import JobCommandError
from console.net.operator import Operator
from console.ui.screens import StoreScreen
from console.ui.screens.dialogs import ConfirmScreen, RestartChoice, RestartDialog
from console.ui.widgets.rank_table import RankTable

AGENT_RESTART_UNAVAILABLE = "needs the SSH set-up of `gantry up` (not configured for this cluster)"


class JobActions(StoreScreen):
    """The job screen's actions; the screen says which rank is selected and what the
    advisor found."""

    def __init__(
        self,
        name: str,
        jobs: JobsStore,
        cluster: ClusterStore,
        operator: Operator | None,
        *,
        open_logs: Callable[[str, int, int], None] | None = None,
        agent_restart: str = AGENT_RESTART_UNAVAILABLE,
    ) -> None:
        super().__init__()
        self.job_name = name
        self.jobs = jobs
        self.cluster = cluster
        self.operator = operator
        self.open_logs = open_logs
        self.agent_restart = agent_restart
        self._status = ""
        self._shown: dict[str, str] = {}

    @property
    def view(self) -> JobView | None:
        return self.jobs.get(self.job_name)

    @property
    def status(self) -> str:
        """The status line: the answer to the last action."""
        return self._status

    @property
    def findings(self) -> list[Advice]:
        """The advisor's findings, in the order its tab lists them."""
        raise NotImplementedError

    def selected_rank(self) -> job_pb2.Rank | None:
        """The rank under the ranks table's cursor."""
        raise NotImplementedError

    # -- actions -------------------------------------------------------------------

    def action_back(self) -> None:
        self.dismiss()

    def action_logs(self) -> None:
        view = self.view
        chosen = self.selected_rank()
        attempt = view.latest_attempt() if view else None
        if chosen is None or attempt is None or self.open_logs is None:
            self._set_status("no rank to show the log of")
            return
        self.open_logs(self.job_name, chosen.rank, attempt.number)

    def action_restart(self) -> None:
        view = self.view
        if view is None:
            return
        bad = sorted(view.bad_nodes() | lost_nodes(view, self.cluster))
        chosen = self.selected_rank()
        node = bad[0] if bad else (chosen.node if chosen is not None else view.nodes()[0])
        if chosen is not None and chosen.node in bad:
            node = chosen.node
        can_exclude = ""
        if len(set(view.nodes())) <= 1:
            can_exclude = "the job has no other node"
        elif not view.checkpoints:
            can_exclude = "no checkpoint to convert yet"
        agent_restart = self.agent_restart
        if self.operator is not None:
            agent_restart = self.operator.agent_restart_unavailable(node)
        spare, can_replace = _spare_for(view, node)
        dialog = RestartDialog(
            self.job_name,
            node,
            fault=self._fault_on(view, node),
            can_exclude=can_exclude,
            agent_restart=agent_restart,
            spare=spare,
            can_replace=can_replace,
        )
        self.app.push_screen(dialog, self._restart_chosen)

    def _fault_on(self, view: JobView, node: str) -> str:
        """What is wrong on `node` for this job ("rank 3 hung", "lost"), "" when nothing."""
        if node in lost_nodes(view, self.cluster):
            return "lost"
        attempt = view.latest_attempt()
        ranks = attempt.ranks if attempt is not None else ()
        bad = sorted(
            (r for r in ranks if r.node == node and r.state in BAD_RANK_STATES),
            key=lambda r: r.rank,
        )
        return ", ".join(
            f"rank {r.rank} " + ("hung" if r.state == RS.RANK_STATE_HUNG else "failed") for r in bad
        )

    def _restart_chosen(self, choice: RestartChoice | None) -> None:
        if choice is None or self.operator is None:
            return
        operator = self.operator
        if choice.kind == "in-place":
            question = f"Restart {self.job_name} in place from the latest checkpoint?"
            detail = "Every rank on every node is stopped, then a new attempt starts."
            call = lambda: operator.restart(self.job_name, node=choice.node)  # noqa: E731
        elif choice.kind == "replace":
            question = f"Run {choice.node}'s ranks on spare {choice.spare}?"
            detail = (
                "Every rank is stopped; the next attempt runs the same ranks, the same world "
                "and the same global batch, with the spare in the node's place, from the "
                "latest checkpoint as it is."
            )
            view = self.view
            # --node is for the record, and names a node of the spec (not a spare in use).
            fault = choice.node if view is not None and choice.node in view.nodes() else ""
            call = lambda: operator.restart(  # noqa: E731
                self.job_name, node=fault, replace={choice.node: choice.spare}
            )
        elif choice.kind == "agent":
            question = f"Restart the agent of {choice.node} over SSH?"
            detail = "Its ranks keep running; the new agent re-adopts them."
            call = lambda: operator.restart_agent(choice.node)  # noqa: E731
        else:
            question = f"Go on without {choice.node}?"
            detail = (
                "The latest checkpoint is converted to a universal one and the job "
                "resumes at the smaller world size."
            )
            call = lambda: operator.restart(  # noqa: E731
                self.job_name, node=choice.node, exclude=(choice.node,)
            )
        self._confirm_then(question, detail, call)

    def action_stop(self) -> None:
        if self.operator is None:
            return
        operator = self.operator
        self._confirm_then(
            f"Stop {self.job_name}?",
            "Every rank is sent SIGTERM, then SIGKILL after the grace period.",
            lambda: operator.stop(self.job_name),
        )

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "checkpoint-table" and self.operator is not None:
            tag = str(event.row_key.value)
            view = self.view
            ckpt = next((c for c in view.checkpoints if c.tag == tag), None) if view else None
            if ckpt is None:
                return
            operator = self.operator
            self._confirm_then(
                f"Resume {self.job_name} from {tag} (step {ckpt.step})?",
                "Every rank is stopped and a new attempt starts from this checkpoint.",
                lambda: operator.restart(self.job_name, from_checkpoint=ckpt.path or tag),
            )

    def on_rank_table_row_selected(self, event: RankTable.RowSelected) -> None:
        if event.table.id == "rank-table":
            self.action_logs()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id != "findings" or self.operator is None:
            return
        index = event.option_index
        findings = self.findings
        if not 0 <= index < len(findings):
            return
        finding = findings[index]
        view = self.view
        if finding.remedy is None or not finding.applicable or view is None:
            self._set_status(f"{finding.title}: nothing to apply automatically")
            return
        try:
            plan = plan_remedy(finding.remedy, view.spec)
        except RemedyError as exc:
            self._set_status(str(exc))
            return
        changes = "; ".join(plan.changes)
        operator = self.operator

        def restart() -> Awaitable[str]:
            if plan.exclude:  # go on without a node (a GPU the driver lost, a fatal XID)
                return operator.restart(self.job_name, node=plan.exclude[0], exclude=plan.exclude)
            return operator.restart(self.job_name, spec=plan.spec)

        self._confirm_then(
            f"Apply: {finding.remedy.summary}?",
            f"{changes}. The job restarts from its latest checkpoint.",
            restart,
        )

    # -- internals -----------------------------------------------------------------

    def _confirm_then(self, question: str, detail: str, call: Callable[[], Awaitable[str]]) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._set_status("working…")
                self._run(call)
            else:
                self._set_status("cancelled")

        self.app.push_screen(ConfirmScreen(question, detail), answered)

    @work(exclusive=True, group="job-action")
    async def _run(self, call: Callable[[], Awaitable[str]]) -> None:
        try:
            self._set_status(await call())
        except JobCommandError as exc:
            self._set_status(f"refused: {exc}")

    def _set_status(self, text: str) -> None:
        self._status = text
        if self.is_mounted:
            self._show("#job-status", text)

    def _show(self, selector: str, content: str | Text) -> None:
        """Updates a one-line Static only when its text changed, without a layout pass
        (a layout of a screen holding a thousand-row table is costly)."""
        key = content.markup if isinstance(content, Text) else content
        if self._shown.get(selector) == key:
            return
        self._shown[selector] = key
        self.query_one(selector, Static).update(content, layout=False)


def _spare_for(view: JobView, node: str) -> tuple[str, str | None]:
    """The free spare the restart dialog offers for ``node`` and, empty when it can, why
    not; None for a job without spares (the dialog has no fourth option)."""
    spares = list(view.spec.spares)
    if not spares:
        return "", None
    attempt = view.latest_attempt()
    swaps = dict(attempt.replaced_nodes) if attempt is not None else {}
    if node in spares and node not in swaps.values():
        return "", f"{node} is a spare that runs no ranks"
    free = [s for s in spares if s not in swaps.values() and s != node]
    if not free:
        return "", "every spare already runs another node's ranks"
    return free[0], ""
