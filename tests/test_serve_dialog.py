"""The serve dialog of the tasks screen, and `gantry serve`: the same settings and the same
one-line errors (console.model.serve_form, pure), the dialog at 80x24 starting a server
with an HTTP port and a stream interval, a field that does not read named without losing
what was typed, and an asked-for queue delay of 0 reaching the server's command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.widgets import Input, Static

from agent.tasks.programs import serve_command
from console.model.serve_form import (
    ServeForm,
    ServeFormError,
    ServeSettings,
    checked,
    settings_from_form,
)
from console.net.cluster_file import NodeTarget, dump_cluster_file
from console.net.tasks_client import serve_request
from console.ui.screens.serve_dialog import ServeScreen
from console.verbs.tasks import add_task_verbs
from tests.task_samples import met_eval
from tests.test_cli import run_cli
from tests.test_tasks_screen import FakeTasksClient, TasksApp, screen_text, shown


def test_empty_fields_are_the_servers_defaults() -> None:
    settings = settings_from_form(ServeForm(" /m/int8 "))
    assert settings == ServeSettings("/m/int8")
    request = serve_request(settings)
    assert not request.serve.HasField("max_queue_delay_ms")
    argv = serve_command(request.serve, Path("/t"))
    for flag in ("--http-port", "--max-batch-size", "--max-queue-delay-ms", "--engine-cpus"):
        assert flag not in argv
    assert "--stream-interval" not in argv and "--prefix-cache-mb" not in argv


def test_every_field_reads() -> None:
    form = ServeForm("/m", "8000", "32", "0", " 2-3 ", "4", "0")
    settings = settings_from_form(form)
    assert settings == ServeSettings("/m", 0, 8000, 32, 0.0, "2-3", 4, 0)
    argv = serve_command(serve_request(settings).serve, Path("/t"))
    # 0 is a delay asked for (nothing held), not the default
    for flag, value in (
        ("--http-port", "8000"),
        ("--max-batch-size", "32"),
        ("--max-queue-delay-ms", "0"),
        ("--engine-cpus", "2-3"),
        ("--stream-interval", "4"),
        ("--prefix-cache-mb", "0"),  # 0 turns it off: sent, unlike an empty field
    ):
        assert argv[argv.index(flag) + 1] == value
    assert settings_from_form(ServeForm("/m", engine_cpus="None")).engine_cpus == ""


@pytest.mark.parametrize(
    ("form", "error"),
    [
        (ServeForm(" "), "model directory: give the model's path on the node"),
        (ServeForm("/m", http_port="80a"), "HTTP port '80a': not a whole number"),
        (ServeForm("/m", http_port="70000"), "HTTP port 70000: not a port (1 to 65535, or 0)"),
        (ServeForm("/m", max_batch_size="-2"), "max batch size -2: give 1 or more"),
        (ServeForm("/m", max_queue_delay_ms="soon"), "queue delay 'soon': not a number of ms"),
        (ServeForm("/m", max_queue_delay_ms="-1"), "queue delay -1: give 0 to 60000 ms"),
        (
            ServeForm("/m", engine_cpus="core 2"),
            "engine CPUs 'core2': auto, none, or CPUs such as 3, 2-3 or 0,2",
        ),
        (ServeForm("/m", stream_interval="0"), "stream interval 0: give 1 or more"),
        (ServeForm("/m", prefix_cache_mb="1G"), "prefix cache MB '1G': not a whole number"),
        (ServeForm("/m", prefix_cache_mb="-1"), "prefix cache MB -1: give 0 (off) or more"),
    ],
)
def test_a_field_that_does_not_read_is_named(form: ServeForm, error: str) -> None:
    with pytest.raises(ServeFormError) as raised:
        settings_from_form(form)
    assert str(raised.value) == error


def test_the_grpc_and_http_ports_differ() -> None:
    with pytest.raises(ServeFormError, match="HTTP port 9000: the gRPC port already"):
        checked(ServeSettings("/m", port=9000, http_port=9000))


def test_gantry_serve_checks_as_the_dialog_does() -> None:
    parser = argparse.ArgumentParser()
    add_task_verbs(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["serve", "/m"])
    # the server's own defaults: batch size sized by it, its queue delay
    assert (args.max_batch_size, args.max_queue_delay_ms, args.stream_interval) == (0, None, 1)
    serve = serve_request(ServeSettings(args.model)).serve
    assert (serve.max_batch_size, serve.stream_interval) == (0, 0)  # not sent: the server's
    assert not serve.HasField("max_queue_delay_ms")


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--stream-interval", "0"], "gantry: --stream-interval 0: give 1 or more"),
        (["--engine-cpus", "two"], "gantry: --engine-cpus 'two': auto, none, or CPUs such as"),
        (["--max-queue-delay-ms", "-5"], "gantry: --max-queue-delay-ms -5: give 0 to 60000 ms"),
    ],
)
def test_gantry_serve_names_the_flag_before_calling_an_agent(
    flags: list[str], error: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = tmp_path / "cluster.yaml"
    # nothing listens there: a call would fail otherwise, not with the flag's line
    token = tmp_path / "token"
    token.write_text("t" * 32)
    token.chmod(0o600)
    dump_cluster_file(cluster, [NodeTarget("node-a", "127.0.0.1:9", token)])
    code, _, err = run_cli(
        ["serve", str(tmp_path / "m"), *flags, "--cluster", str(cluster)], capsys
    )
    assert code == 2 and error in err


async def test_the_dialog_starts_a_server_with_its_settings() -> None:
    client = FakeTasksClient([met_eval()])
    app = TasksApp(client)
    async with app.run_test(size=(80, 24)) as pilot:
        await shown(pilot, app)
        await pilot.press("S")
        assert isinstance(app.screen, ServeScreen)
        text = screen_text(app)
        for label in ("model directory", "HTTP port", "stream interval", "escape cancels"):
            assert label in text
        await pilot.press(*"/m/final", "tab", *"70000", "enter")
        await pilot.pause()
        # named, nothing lost, nothing started
        assert isinstance(app.screen, ServeScreen)
        error = app.screen.query_one("#serve-error", Static)
        assert "HTTP port 70000: not a port" in str(error.render())
        assert app.screen.query_one("#serve-model_dir", Input).value == "/m/final"
        assert not client.started
        http = app.screen.query_one("#serve-http_port", Input)
        http.value = "8000"
        await pilot.press("tab", "tab", "tab", "tab", *"4", "enter")
        for _ in range(20):
            if client.started:
                break
            await pilot.pause()
        [(_, request)] = client.started
        assert request.WhichOneof("spec") == "serve"
        assert (request.serve.model_dir, request.serve.http_port) == ("/m/final", 8000)
        assert request.serve.stream_interval == 4
        assert not request.serve.HasField("max_queue_delay_ms")


async def test_escape_cancels() -> None:
    client = FakeTasksClient([met_eval()])
    app = TasksApp(client)
    async with app.run_test(size=(80, 24)) as pilot:
        await shown(pilot, app)
        await pilot.press("S", *"/m", "escape")
        await pilot.pause()
        assert not isinstance(app.screen, ServeScreen)
        assert not client.started


class DialogHost(App[None]):
    def on_mount(self) -> None:
        self.push_screen(ServeScreen("/data/runs/demo/out/final-int8"))


def test_serve_dialog_snapshot_80x24(snap_compare: Any) -> None:
    assert snap_compare(DialogHost(), terminal_size=(80, 24))
