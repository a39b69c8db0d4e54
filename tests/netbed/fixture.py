"""The `netbed` pytest fixture: a 3-host bed per test module.

Module-scoped: building a bed (namespaces, certificates, three agents) costs seconds, so a
module's tests share one; a module's jobs and faults never reach another module's tests.
Faults left by a failed test are undone after it (`netbed_faults_undone`, autouse where
imported)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netbed.bed import Netbed, NetbedError, start_bed, teardown


@pytest.fixture(scope="module")
def netbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Netbed]:
    try:
        bed = start_bed(Path(tmp_path_factory.mktemp("netbed")))
    except NetbedError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield bed
    finally:
        teardown(bed)


@pytest.fixture(autouse=True)
def netbed_faults_undone(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the bed: every fault it left is undone."""
    yield
    if "netbed" in request.fixturenames:
        bed: Netbed = request.getfixturevalue("netbed")
        bed.heal_all()
