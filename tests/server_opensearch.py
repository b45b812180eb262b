"""The ``opensearch_server`` fixture: osmem-server, an in-memory OpenSearch-API server.

No real Elasticsearch or OpenSearch installs on these machines (both need a JVM and a
download); osmem-server (PyPI: one static binary in its wheel) answers the same REST API.
Differences from the real servers met by the tests are noted at the top of
tests/test_elasticsearch_backend.py.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from serverkit import HOST, Server, Unavailable, free_port, serving
from servers import missing

__all__ = ["OpenSearchServer", "make_opensearch"]


class OpenSearchServer(Server):
    """osmem-server on a loopback port; ``url`` is ``http://127.0.0.1:PORT``."""

    name = "osmem-server"
    scheme = "http"

    def __init__(self, binary: str, workdir: Path) -> None:
        port = free_port()
        # Its stdin is /dev/null here, which it would take for its parent going away; it
        # still exits with the test process (--parent-pid).
        argv = [binary, "-addr", f"{HOST}:{port}", "-no-stdin-watch", "-no-ja",
                "-parent-pid", str(os.getpid())]
        super().__init__(argv, workdir, port)

    def is_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/", timeout=1.0) as response:
            info = json.load(response)
        return bool(response.status == 200 and "version" in info)


def make_opensearch(workdir: Path) -> OpenSearchServer:
    try:
        import osmem_server
    except ImportError:
        raise Unavailable("osmem-server", "pip install osmem-server") from None
    try:
        binary = osmem_server.resolve_binary()
    except osmem_server.OsmemError as exc:
        raise Unavailable("osmem-server's binary", str(exc)) from None
    return OpenSearchServer(binary, workdir)


@pytest.fixture(scope="session")
def opensearch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSearchServer]:
    try:
        server = make_opensearch(tmp_path_factory.mktemp("opensearch"))
    except Unavailable as exc:
        missing(exc.what, exc.hint)
    with serving(server):
        yield server
