"""The ``datastore_emulator`` fixture: Google's Firestore emulator in Datastore mode.

The emulator that gcloud ships for Firestore serves the Datastore API too when started with
``--database-mode=datastore-mode``, and it emulates Firestore in Datastore mode, which is
what every Datastore database now is. Started as tests/serverkit.py starts the Firestore
emulator (same program, same readiness check), on a port of its own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from serverkit import HOST, FirestoreEmulator, Unavailable, _gcloud_emulator, free_port, serving
from servers import missing

__all__ = ["DatastoreEmulator", "make_datastore"]


class DatastoreEmulator(FirestoreEmulator):
    name = "datastore"

    #: The project the tests use unless they pick one of their own (the emulator keeps
    #: each project's data apart, so a test may use a fresh one for a clean slate).
    project = "asyncsessions-test"

    @property
    def host_port(self) -> str:
        """The value for DATASTORE_EMULATOR_HOST."""
        return f"{self.host}:{self.port}"


def make_datastore(workdir: Path) -> DatastoreEmulator:
    emulator = _gcloud_emulator()
    if emulator is None:
        raise Unavailable("the Firestore emulator (serving Datastore mode)",
                          "apt-get install google-cloud-cli-firestore-emulator")
    if not (os.environ.get("JAVA") or shutil.which("java")):
        raise Unavailable("java (needed by the Firestore emulator)",
                          "apt-get install default-jre-headless")
    port = free_port()
    # The emulator also opens a WebSocket port for its UI; pin it to a free one rather than
    # letting it pick, so that two runs on one machine never race for it.
    argv = [emulator, "start", f"--host={HOST}", f"--port={port}",
            "--database-mode=datastore-mode", f"--websocket_port={free_port()}"]
    return DatastoreEmulator(argv, workdir, port)


@pytest.fixture(scope="session")
def datastore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatastoreEmulator]:
    try:
        server = make_datastore(tmp_path_factory.mktemp("datastore"))
    except Unavailable as exc:
        missing(exc.what, exc.hint)
    with serving(server):
        yield server
