"""Nox sessions: lint, typecheck, tests (real servers started by pytest), minimum, demo,
bench."""

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
    "orjson",  # the serializer experiment's candidates
    "msgspec",
    # Flask-Session's sqlalchemy and dynamodb stores (the sql_cloud stage); boto3 pinned to
    # the botocore aiobotocore 3.10 accepts.
    "flask-sqlalchemy",
    "psycopg2-binary",
    "moto[server]",
    "boto3>=1.43.115,<1.43.118",
    "mypy-boto3-dynamodb",
]

#: pip constraints pinning every dependency to the floor pyproject.toml declares, and the
#: extras they cover (not [all]: google-cloud-datastore needs a newer protobuf than the
#: firestore floor accepts, and the other stores' floors are not pinned yet).
MIN_CONSTRAINTS = "tests/constraints-min.txt"
MIN_EXTRAS = "quart,redis,mongodb,memcached,firestore"
#: The MongoDB wire server needs a newer pymongo than the floor: it gets a venv of its own,
#: found on PATH by tests/serverkit.py.
MIN_SERVER_TOOLS = [r for r in GROUPS["test"] if r.startswith("nx-27017")]
#: Every store whose floor is pinned, under Flask and Quart, in about two minutes: the
#: behaviour suite, each store's own tests, config and routing, and store failures.
MIN_TESTS = [
    "tests/test_behaviour.py", "tests/test_stores.py", "tests/test_config.py",
    "tests/test_routing.py", "tests/test_failures.py", "tests/test_resp.py",
    "tests/test_redis_records.py", "tests/test_memcache_backend.py",
    "tests/test_mongodb_backend.py", "tests/test_firestore_backend.py",
]
#: The ASGI frameworks and the stores without a pinned floor run in `tests` only; partitioned
#: cookies need Werkzeug >= 3.1, above the pinned 3.0.
MIN_DESELECT = " and ".join(f"not {word}" for word in (
    "starlette", "fastapi", "sqlalchemy", "peewee", "cachelib", "elasticsearch", "dynamodb",
    "datastore", "partitioned",
))


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
def minimum(session: nox.Session) -> None:
    """The tests on the oldest releases pyproject.toml allows, with `tests`' servers."""
    _ensure_system_servers(session)
    env: dict[str, str] = {}
    if session.venv_backend != "none":
        test_deps = [r for r in GROUPS["test"] if r not in MIN_SERVER_TOOLS]
        session.install("-c", MIN_CONSTRAINTS, "-e", f".[{MIN_EXTRAS}]", *test_deps)
        tools = Path(session.create_tmp()).resolve() / "server-tools"
        if not (tools / "bin" / "python").exists():
            session.run("python", "-m", "venv", str(tools))
        session.run(str(tools / "bin" / "python"), "-m", "pip", "install", "-q",
                    *MIN_SERVER_TOOLS, external=True)
        env["PATH"] = os.pathsep.join([str(tools / "bin"), os.environ.get("PATH", "")])
    # What was really installed, so a green run shows which floors it proved.
    pinned = [line.split("==")[0] for line in Path(MIN_CONSTRAINTS).read_text().splitlines()
              if "==" in line and not line.startswith("#")]
    session.run("python", "-c", "import sys, importlib.metadata as m; "
                "print(*(f'{n}=={m.version(n)}' for n in sys.argv[1:]))", *pinned)
    session.run("pytest", *MIN_TESTS, "-k", MIN_DESELECT, *session.posargs, env=env)


@nox.session
def demo(session: nox.Session) -> None:
    _install(session, "-e", ".[all]")
    session.run("python", "demo/app.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    _ensure_system_servers(session)
    _install(session, "-e", ".[all]", *BENCH_PACKAGES)
    session.run("python", "-m", "benchmarks", *session.posargs)
