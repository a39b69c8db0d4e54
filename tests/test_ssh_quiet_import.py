"""`gantry up` and `--ssh` start without asyncssh's CryptographyDeprecationWarning lines,
and only that warning category is silenced, only while asyncssh is imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import warnings
before = list(warnings.filters)
import console.ssh.{module}
assert warnings.filters == before, "the import left a warnings filter behind"
from cryptography.utils import CryptographyDeprecationWarning
warnings.warn("later ones still show", CryptographyDeprecationWarning)
warnings.warn("and other categories", UserWarning)
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_ssh_modules_import_asyncssh_without_its_warnings() -> None:
    for module in ("up_verb", "mode", "connect"):
        done = run_python(PROBE.format(module=module))
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stderr.splitlines() if "Warning" in line]
        assert len(lines) == 2, (module, done.stderr)  # the two warned above, no more
        assert "later ones still show" in lines[0] and "and other categories" in lines[1]


def test_gantry_up_and_ssh_print_no_warning(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("")  # bad input: the verbs stop at once, after importing asyncssh
    for args in (["up", str(hosts)], ["--ssh", str(hosts), "status"]):
        done = subprocess.run(
            [sys.executable, "-m", "console.cli", *args],
            cwd=tmp_path,
            env=None,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "Warning" not in done.stderr, done.stderr
        assert done.stderr.startswith("gantry: "), done.stderr
