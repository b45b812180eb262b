"""Nox sessions: lint, typecheck, tests (real servers started by pytest), demo, bench."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox
import nox.command

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_venv = "yes"

PYPROJECT = nox.project.load_toml("pyproject.toml")
GROUPS: dict[str, list[str]] = PYPROJECT["dependency-groups"]
LINT_PATHS = [p for p in ("src", "tests", "benchmarks", "demo", "noxfile.py") if Path(p).exists()]
EMULATOR_PACKAGE = "google-cloud-cli-firestore-emulator"
SERVER_PACKAGES = {
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "memcached": "memcached",
    "mariadbd": "mariadb-server",
}
#: PostgreSQL's server binaries live outside PATH (/usr/lib/postgresql/<major>/bin).
POSTGRES_PACKAGE = "postgresql"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
# What `python -m benchmarks` needs besides asyncsessions[all]. Peers without an importable
# package are reported as "not measured" in the results rather than failing the run.
BENCH_PACKAGES = [
    "Flask-Session==0.8.*",  # the peers measured against
    "pymemcache",  # Flask-Session's memcached client
    "quart-session",
    "hypercorn",  # Quart's server for req/s
    "gunicorn",  # Flask's server for req/s (gthread worker)
    "nx-27017>=0.8",  # the MongoDB wire server, as in the test group
    "matplotlib",  # results.png
    "pyinstrument",  # --profile
]


def _install(session: nox.Session, *args: str) -> None:
    # With --no-venv (a prepared machine), use what is installed instead of refusing to run.
    if session.venv_backend != "none":
        session.install(*args)


def _deb_installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and "install ok installed" in result.stdout


def _apt(session: nox.Session, *args: str) -> bool:
    try:
        session.run("apt-get", *args, external=True, env=APT_ENV)
    except nox.command.CommandFailed:
        return False
    return True


def _ensure_system_servers(session: nox.Session) -> None:
    """Install the Debian test servers when we can (root + apt).

    Failures only warn: the pytest fixtures skip a missing server, or fail when CI=true.
    """
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    wanted = [pkg for binary, pkg in SERVER_PACKAGES.items()
              if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists()]
    if not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        wanted.append(POSTGRES_PACKAGE)
    has_emulator = _deb_installed(EMULATOR_PACKAGE)
    if not wanted and has_emulator and shutil.which("java"):
        return
    if not _apt(session, "update"):
        session.warn("apt-get update failed; trying the cached package lists")
    if wanted and not _apt(session, "install", "-y", *wanted):
        session.warn(f"could not install {' '.join(wanted)}")
    # Only in Google's apt repository, which may not be configured.
    if not has_emulator and not _apt(session, "install", "-y", EMULATOR_PACKAGE):
        session.warn(f"{EMULATOR_PACKAGE} is not available from apt")
    if _deb_installed(EMULATOR_PACKAGE) and shutil.which("java") is None:
        _apt(session, "install", "-y", "default-jre-headless")


@nox.session
def lint(session: nox.Session) -> None:
    _install(session, *GROUPS["lint"])
    session.run("ruff", "check", *LINT_PATHS)


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session, "-e", ".[all]", *GROUPS["typecheck"])
    session.run("mypy", "--strict", "src")


@nox.session
def tests(session: nox.Session) -> None:
    _ensure_system_servers(session)
    _install(session, "-e", ".[all]", *GROUPS["test"])
    session.run("pytest", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    _install(session, "-e", ".[all]")
    session.run("python", "demo/app.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    _ensure_system_servers(session)
    _install(session, "-e", ".[all]", *BENCH_PACKAGES)
    session.run("python", "-m", "benchmarks", *session.posargs)
