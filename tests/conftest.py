from __future__ import annotations
import tests._hypothesis_profiles  # noqa: F401  (HYPOTHESIS_PROFILE for every test)

from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers.server import ServerProcess, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A chathub server process shared by one test module (HS256 test secret)."""
    srv = start_server(tmp_path_factory.mktemp("server"))
    yield srv
    rc = srv.stop()
    assert rc == 0, f"server exited with {rc}:\n{srv.output()}"
    assert "Traceback" not in srv.output(), srv.output()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    """Start servers with custom settings; each is stopped after the test."""
    started: list[ServerProcess] = []

    def make(**kw) -> ServerProcess:
        srv = start_server(tmp_path / f"s{len(started)}", **kw)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
