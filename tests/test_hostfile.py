"""The SSH host file (console.ssh.hostfile): DeepSpeed's form, ports, comments, errors."""

from __future__ import annotations

import re

import pytest

from console.ssh.hostfile import HostEntry, HostfileError, parse_hostfile

# -- the hostfile (pure) -----------------------------------------------------------------


def test_hostfile_deepspeed_form_with_ports_and_comments() -> None:
    text = (
        "# cluster\ngpu-01 slots=8\n\nGPU_02.lan slots=4  # two\n127.0.0.1:2222 slots=1\nnode-x\n"
    )
    hosts = parse_hostfile(text, "h")
    assert hosts == [
        HostEntry("gpu-01", "gpu-01", None, 8),
        HostEntry("gpu-02-lan", "GPU_02.lan", None, 4),
        HostEntry("127-0-0-1-2222", "127.0.0.1", 2222, 1),
        HostEntry("node-x", "node-x", None, 1),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a slots=x\n", "h line 1: expected 'HOST slots=N'"),
        ("a slots=0\n", "h line 1: slots must be at least 1"),
        ("a:99999 slots=1\n", "h line 1: port in 'a:99999' must be 1-65535"),
        ("a\nA\n", "h line 2: A is node a again (first on line 1)"),
        ("# nothing\n", "h: no hosts"),
        ("a/b slots=1\n", "h line 1: 'a/b' is not a host name"),
    ],
)
def test_hostfile_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(HostfileError, match="^" + re.escape(message)):
        parse_hostfile(text, "h")


# -- a real sshd ------------------------------------------------------------------------
