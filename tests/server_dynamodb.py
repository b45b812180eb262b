"""The ``dynamodb_server`` fixture: moto's server (``moto[server]``) speaking DynamoDB's HTTP API.

moto keeps everything in memory and accepts any credentials; the fixture hands out dummy ones
so that no test ever signs with a real AWS key from the environment.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from shutil import which

import pytest

from serverkit import HOST, Server, Unavailable, free_port, serving
from servers import missing


class MotoServer(Server):
    """``moto_server`` on a loopback port, restartable on the same port (state is lost)."""

    name = "moto"
    scheme = "http"
    region_name = "us-east-1"
    aws_access_key_id = "testing"
    aws_secret_access_key = "testing"  # moto checks no signature

    def __init__(self, binary: str, workdir: Path) -> None:
        port = free_port()
        super().__init__([binary, "-H", HOST, "-p", str(port)], workdir, port)

    @property
    def endpoint_url(self) -> str:
        return self.url

    @property
    def credentials(self) -> dict[str, str]:
        """Client keyword arguments: region, endpoint and the dummy keys."""
        return {"region_name": self.region_name, "endpoint_url": self.endpoint_url,
                "aws_access_key_id": self.aws_access_key_id,
                "aws_secret_access_key": self.aws_secret_access_key}

    def is_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1.0) as response:
            return bool(response.status == 200)


def _moto_server() -> str:
    """The moto_server script of the running interpreter's environment, else one on PATH."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / "moto_server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = which("moto_server")
    if found is None:
        raise Unavailable("moto_server", "pip install 'moto[server]'")
    return found


def make_moto(workdir: Path) -> MotoServer:
    return MotoServer(_moto_server(), workdir)


@pytest.fixture(scope="session")
def dynamodb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    try:
        server = make_moto(tmp_path_factory.mktemp("dynamodb"))
    except Unavailable as exc:
        missing(exc.what, exc.hint)
    with serving(server):
        yield server
