"""``flask sessions`` (and ``quart sessions``): count, show, purge and revoke sessions.

Installed by :meth:`asyncsessions.Session.init_app` on ``app.cli``. The store coroutines run
through the Flask bridge (Flask) or a fresh event loop (Quart), and every client they opened
is closed before the command ends.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from functools import partial
from typing import Any, TypeVar

import click

from .backends.base import Backend, ClientSideBackend, Record, close_loop_clients
from .config import StoreConfig
from .engine import Engine
from .index import revoke
from .serialization import loads

__all__ = ["sessions_command"]

T = TypeVar("T")


def sessions_command(app: Any, engine: Engine, *, quart: bool) -> click.Group:
    """The ``sessions`` command group for ``app``, whose session engine is ``engine``."""

    def run(work: Callable[[], Awaitable[T]]) -> T:
        async def main() -> T:
            try:
                return await work()
            finally:
                await close_loop_clients()

        if quart:
            return asyncio.run(main())
        from .bridge import get_bridge

        return get_bridge().run(main)

    def server_side() -> list[tuple[StoreConfig, Backend]]:
        return [(s, s.backend) for s in engine.stores if isinstance(s.backend, Backend)]

    @click.group("sessions", help="Count, show, purge and revoke the app's server-side "
                                  "sessions.")
    def group() -> None:
        pass

    @group.command("count", help="Live sessions per store (where the store can count them).")
    def count() -> None:
        failed = False
        for store in engine.stores:
            backend = store.backend
            label = _label(store)
            if isinstance(backend, ClientSideBackend):
                click.echo(f"{label}: sessions live in the cookie (not counted)")
                continue
            assert isinstance(backend, Backend)
            try:
                found = run(partial(backend.count, store.key_prefix))
            except Exception as exc:
                failed = True
                click.echo(f"{label}: error: {type(exc).__name__}: {exc}", err=True)
                continue
            if found is None:
                click.echo(f"{label}: cannot count cheaply (not supported)")
            else:
                click.echo(f"{label}: {found} live")
        if failed:
            sys.exit(1)

    @group.command("show", help="The fields, flag and expiry of session ID in each "
                   "server-side store (read without restarting its lifetime).")
    @click.argument("session_id", metavar="ID")
    def show(session_id: str) -> None:
        failed = False
        for store, backend in server_side():
            label = _label(store)
            try:
                record, expires = run(partial(_read, backend, store.key_prefix + session_id))
            except Exception as exc:
                failed = True
                click.echo(f"{label}: error: {type(exc).__name__}: {exc}", err=True)
                continue
            if record is None:
                click.echo(f"{label}: no session")
                continue
            click.echo(f"{label}: permanent={record.permanent}, expires {_expiry(expires)}"
                       + (" (another library's record)" if record.foreign else ""))
            for name in sorted(record.fields):
                try:
                    value = repr(loads(record.fields[name]))
                except ValueError:
                    value = f"<not readable: {record.fields[name]!r}>"
                click.echo(f"  {name!r}: {value}")
        if failed:
            sys.exit(1)

    @group.command("purge", help="Remove expired sessions from stores that keep them.")
    @click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
    @click.option("--batch", type=click.IntRange(min=1), default=500, show_default=True,
                  help="Records removed at most per step.")
    def purge(dry_run: bool, batch: int) -> None:
        failed = False
        verb = "would remove" if dry_run else "removed"
        for store, backend in server_side():
            label = _label(store)
            if not backend.purges_expired:
                click.echo(f"{label}: not purged (no purge in this store: its records expire"
                           " natively or by the store's own cleanup)")
                continue
            try:
                total = run(partial(_purge, backend, store.key_prefix, batch=batch,
                                    dry_run=dry_run, label=label))
            except Exception as exc:
                failed = True
                click.echo(f"{label}: error: {type(exc).__name__}: {exc}", err=True)
                continue
            click.echo(f"{label}: {verb} {total} expired")
        if failed:
            sys.exit(1)

    @group.command("revoke", help="Delete every session whose indexed FIELD has VALUE "
                                  "(log out everywhere). VALUE is read as JSON when it parses "
                                  "(42 is a number, '\"42\"' a string), else as a string.")
    @click.argument("field")
    @click.argument("value")
    def revoke_command(field: str, value: str) -> None:
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        try:
            found = run(partial(revoke, engine, {field: parsed}))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        except Exception as exc:
            click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(1)
        click.echo(f"revoked {found} session{'' if found == 1 else 's'} with {field}={parsed!r}")

    return group


async def _read(backend: Backend, key: str) -> tuple[Record | None, float | None]:
    """The record under ``key`` and when it expires, neither read touching it."""
    record = await backend.load(key, touch=False)
    return record, None if record is None else await backend.expires_at(key)


def _expiry(at: float | None) -> str:
    """``at`` (Unix time) as ISO 8601 UTC and seconds from now, or "unknown"."""
    if at is None:
        return "unknown"
    try:
        shown = datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        shown = "beyond year 9999"
    left = round(at - time.time())
    return (f"{shown.replace('+00:00', 'Z')} "
            + (f"(in {left} s)" if left >= 0 else f"({-left} s ago)"))


async def _purge(backend: Backend, prefix: str, *, batch: int, dry_run: bool,
                 label: str) -> int:
    """Purge ``backend``, with a progress bar on a terminal; how many went (or would go)."""
    total = 0
    if dry_run or not sys.stdout.isatty():
        async for step in backend.purge(prefix, batch=batch, dry_run=dry_run):
            total += step
        return total
    expected = 0
    async for step in backend.purge(prefix, batch=batch, dry_run=True):
        expected += step
    with click.progressbar(length=expected, label=f"{label}: purging") as bar:
        async for step in backend.purge(prefix, batch=batch, dry_run=False):
            total += step
            bar.update(step)
    return total


def _label(store: StoreConfig) -> str:
    location = store.backend.location
    return f"{store.name} ({location})" if location else store.name
