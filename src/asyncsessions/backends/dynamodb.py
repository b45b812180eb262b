"""DynamoDB store: an item per session, changed field by field with conditional UpdateItem, via
aiobotocore (botocore, the AWS SDK's own request code, on asyncio: no thread per call)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import botocore.loaders
import botocore.session
from aiobotocore.credentials import AioCredentials
from aiobotocore.session import AioSession
from botocore.client import BaseClient
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError
from botocore.utils import validate_region_name

from . import flask_session
from .base import ClientBackend, Record, Write

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb.client import DynamoDBClient
    from types_aiobotocore_dynamodb.type_defs import AttributeValueTypeDef

__all__ = ["DynamoDBBackend"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Item = Mapping[str, "AttributeValueTypeDef"]

_KEY = "id"
#: Longest partition key value DynamoDB accepts, in bytes.
_MAX_KEY_BYTES = 2048
#: Longest attribute (and map key) name, in bytes.
_MAX_NAME_BYTES = 65536
#: Field paths per UpdateItem. DynamoDB allows 300 operators or functions in an update
#: expression and 4 KB of expression text; 100 paths of ``#f.#99=:99,`` fit both with room for
#: the condition and the lifetime. A write naming more is sent in several such updates.
_MAX_PATHS = 100
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_ESCAPED = re.compile("%(25|00)")

# Placeholders every update's condition uses: the item is live and of this store's shape.
_NAMES = {"#f": "f", "#p": "permanent", "#t": "ttl", "#x": "ends", "#e": "expires"}
_OURS = ("attribute_type(#f, :M) AND attribute_type(#p, :BOOL) AND attribute_type(#t, :N)"
         " AND attribute_type(#e, :N) AND attribute_type(#x, :N)")
_LIVE = f"{_OURS} AND #x > :now"
_TYPES: dict[str, AttributeValueTypeDef] = {
    ":M": {"S": "M"}, ":BOOL": {"S": "BOOL"}, ":N": {"S": "N"},
}
# Flask-Session 0.8's items: {"id": key, "val": B (msgpack or JSON), "expiration": N}.
_THEIR_NAMES = {"#f": "f", "#v": "val", "#xp": "expiration"}
_THEIRS = "attribute_not_exists(#f) AND attribute_type(#v, :B) AND attribute_type(#xp, :N)"
_THEIR_TYPES: dict[str, AttributeValueTypeDef] = {":B": {"S": "B"}, ":N": {"S": "N"}}


def _escape(name: str) -> str:
    """``name`` as a map key: ``%`` and NUL percent-encoded, ``""`` (no valid name) as ``%``."""
    return name.replace("%", "%25").replace("\0", "%00") or "%"


def _unescape(stored: str) -> str:
    if stored == "%":
        return ""
    return _ESCAPED.sub(lambda match: "%" if match[1] == "25" else "\0", stored)


def _number(value: int) -> AttributeValueTypeDef:
    return {"N": str(value)}


def _time(value: float) -> AttributeValueTypeDef:
    """A Unix time to the millisecond (a finer one only adds digits to every item)."""
    return {"N": f"{value:.3f}"}


def _decimal(attribute: Any) -> tuple[Decimal, str] | None:
    """The finite number in a Number attribute, and its text; else ``None``."""
    text = attribute.get("N") if isinstance(attribute, dict) else None
    try:
        number = Decimal(text) if isinstance(text, str) else None
    except InvalidOperation:
        return None
    if number is None or not number.is_finite():
        return None
    assert isinstance(text, str)
    return number, text


def _value(value: bytes) -> AttributeValueTypeDef:
    # Text keeps sessions readable in the console; values are opaque, so any bytes are kept.
    try:
        return {"S": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"B": value}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _NotOurs(Exception):
    """An item this store did not write; the message says what gave it away."""


@dataclass(frozen=True, slots=True)
class _Found:
    record: Record
    ttl: int
    ends: Decimal
    ends_text: str  # as stored, for a condition that it is still the same


def _parse(item: Item, expires: str) -> _Found:
    """The session in ``item``, live or not; :class:`_NotOurs` if it is no record of ours."""
    stored = item.get("f", {}).get("M")
    if not isinstance(stored, dict):
        raise _NotOurs("f is not a map")
    permanent = item.get("permanent", {}).get("BOOL")
    if not isinstance(permanent, bool):
        raise _NotOurs("permanent is not true or false")
    ttl = _decimal(item.get("ttl"))
    if ttl is None or ttl[0] <= 0 or ttl[0] != int(ttl[0]):
        raise _NotOurs("ttl is not a positive whole number")
    ends = _decimal(item.get("ends"))
    if ends is None:
        raise _NotOurs("ends is not a number")
    if _decimal(item.get(expires)) is None:
        raise _NotOurs(f"{expires} is not a number")
    fields: dict[str, bytes] = {}
    for name, value in stored.items():
        if _escape(_unescape(name)) != name:
            raise _NotOurs("a name in f is not escaped")
        text, data = value.get("S"), value.get("B")
        if isinstance(text, str) and len(value) == 1:
            fields[_unescape(name)] = text.encode("utf-8")
        elif isinstance(data, bytes) and len(value) == 1:
            fields[_unescape(name)] = data
        else:
            raise _NotOurs("a value in f is neither a string nor binary")
    return _Found(Record(fields, permanent), int(ttl[0]), *ends)


def _their_item(item: Item) -> tuple[bytes, Decimal] | None:
    """Flask-Session 0.8's value and expiration in ``item``; ``None``: not its shape."""
    if "f" in item or "val" not in item:
        return None
    data = item["val"].get("B")
    expiration = _decimal(item.get("expiration"))
    if not isinstance(data, bytes) or expiration is None:
        raise _NotOurs("a Flask-Session item without a binary val and a number expiration")
    return data, expiration[0]


def _their_now() -> float:
    """Now as Flask-Session 0.8 dates ``expiration``: ``datetime.utcnow().timestamp()``."""
    # That reads UTC as local time, off by the machine's UTC offset; compared on a machine in
    # the writer's time zone, their sessions end when they would have there.
    return datetime.now(timezone.utc).replace(tzinfo=None).timestamp()


def _stored_name(name: str) -> str:
    escaped = _escape(name)
    size = len(escaped.encode("utf-8"))
    if size > _MAX_NAME_BYTES:
        raise ValueError(f"session field name {name[:40]!r}… is {size} bytes: DynamoDB "
                         f"attribute names hold at most {_MAX_NAME_BYTES} bytes (64 KB)")
    return escaped


def _too_large(exc: ClientError) -> bool:
    # PutItem: "Item size has exceeded the maximum allowed size"; UpdateItem: "Item size to
    # update has exceeded the maximum allowed size".
    message = str(exc.response.get("Error", {}).get("Message", ""))
    return _code(exc) == "ValidationException" and "maximum allowed size" in message


@dataclass(frozen=True, slots=True)
class _Settings:
    """How to open a client like the user's, on any event loop."""

    region_name: str
    endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    profile: str | None = None
    config: Config | None = None


class _Connection:
    """The aiobotocore client of one event loop, opened on first use (opening is async)."""

    def __init__(self, settings: _Settings, loader: botocore.loaders.Loader) -> None:
        self._settings = settings
        self._loader = loader
        self._client: DynamoDBClient | None = None
        self.lock = asyncio.Lock()  # opening, and creating the table

    async def get(self) -> DynamoDBClient:
        if self._client is None:
            async with self.lock:
                if self._client is None:
                    self._client = await self._open()
        return self._client

    async def _open(self) -> DynamoDBClient:
        settings = self._settings
        session = AioSession(profile=settings.profile)
        # One loader for every loop's session: each would parse the service model again
        # (measured: ~65 ms per new event loop).
        session.register_component("data_loader", self._loader)
        # Typed per service name, with too many optional arguments for mypy to match.
        create: Any = session.create_client
        client: DynamoDBClient = await create(
            "dynamodb", region_name=settings.region_name, endpoint_url=settings.endpoint_url,
            aws_access_key_id=settings.aws_access_key_id,
            aws_secret_access_key=settings.aws_secret_access_key,
            aws_session_token=settings.aws_session_token, config=settings.config,
        ).__aenter__()
        return client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


class DynamoDBBackend(flask_session.ReadsFlaskSession, ClientBackend[_Connection]):
    """Sessions in an Amazon DynamoDB table, through aiobotocore.

    ``client`` may be an aiobotocore or boto3 DynamoDB client, or an aiobotocore, botocore or
    boto3 session: each event loop gets its own aiobotocore client with the same region,
    endpoint, botocore config, profile and fixed keys. Credentials that renew themselves
    (roles, SSO, instance or container metadata) are resolved again by each loop's client,
    from the session's profile and the environment. Otherwise ``region_name`` (default: the
    AWS configuration, ``AWS_DEFAULT_REGION`` or the profile's), ``endpoint_url`` (DynamoDB
    Local, a VPC endpoint) and ``aws_access_key_id``/``aws_secret_access_key`` (and
    ``aws_session_token``; default: the usual AWS credential chain); retries then use
    botocore's "standard" mode unless the AWS configuration chooses one.

    One item per session under ``id = key`` (table ``sessions``, partition key ``id``)::

        f          M     escaped field name -> value (UTF-8 JSON text as S, other bytes as B)
        permanent  BOOL
        ttl        N     the lifetime in seconds the session was last given
        ends       N     Unix time, to the millisecond, when it ends: what reads compare
        expires    N     the same in whole seconds, rounded up: the table's TTL attribute
                         (DynamoDB's TTL documents whole epoch seconds), named by
                         ``ttl_attribute`` (default ``expires``)

    A new session is one ``PutItem``, which replaces whatever was under its id. Any other
    write is one ``UpdateItem`` that sets and removes fields by document path (``SET
    #f.#0=:0 REMOVE #f.#1``, names always as placeholders), so requests that change
    different fields all survive. Its condition admits only a live item of this store's
    shape (``f`` a map, the other attributes of their types, ``ends > :now``): a session
    that a logout deleted, that expired or that another program's item replaced is left
    alone, and ``store`` returns ``False``. A write that keeps the permanent flag restarts
    the item's own lifetime in the same update (``SET #x=:now+#t``: arithmetic on the stored
    ``ttl``). A write that removed fields and set none asks for the item back, and if no
    field is left deletes it with a ``DeleteItem`` conditional on ``size(f) = 0``, which a
    field another request added meanwhile fails.

    A read is one strongly consistent ``GetItem`` (an eventually consistent one may miss the
    write of the request before). DynamoDB's TTL deletes lazily (within days), so ``ends`` is
    checked on read. A refreshing read restarts the lifetime only once more than half of it
    has gone, with an ``UpdateItem`` conditional on the ``ends`` it read, so it neither
    resurrects a deleted session nor undoes a concurrent write's restart. Sliding on every
    read with one conditional ``UpdateItem`` (``ReturnValues=ALL_NEW``) would also be one
    call, but a write: a write unit per KB of the item, where a consistent read costs one
    read unit (a fifth of the price) per 4 KB.

    ``create_table`` (default ``True``): a missing table is created (on-demand billing) with
    TTL on ``ttl_attribute`` when a call first finds it missing. That takes seconds on AWS, so
    requests may time out until it is active; where the application may not create tables,
    create it beforehand and pass ``create_table=False``::

        aws dynamodb create-table --table-name sessions --billing-mode PAY_PER_REQUEST \\
            --attribute-definitions AttributeName=id,AttributeType=S \\
            --key-schema AttributeName=id,KeyType=HASH
        aws dynamodb update-time-to-live --table-name sessions \\
            --time-to-live-specification Enabled=true,AttributeName=expires

    With ``reads_flask_session`` (on for ``SESSION_TYPE = "dynamodb"``, whose table defaults
    to Flask-Session's ``Sessions``), an item Flask-Session 0.8 wrote under the key, ``{"id":
    key, "val": B (msgpack or JSON), "expiration": N}``, is read as a foreign record while
    ``expiration`` is ahead; a pickle or other unreadable ``val`` is no session, left as it
    is. Flask-Session dates ``expiration`` with ``datetime.utcnow().timestamp()``, off by the
    machine's UTC offset, so it is compared with the same clock: right where the app servers
    keep the time zone they had. The session's first write replaces the item with one of
    this store's. A ``boto3.resource("dynamodb")`` (their ``SESSION_DYNAMODB``) is taken for
    its client.

    ``count`` and ``purge`` (``flask sessions``) scan the whole table (read units for all of
    it) with a filter on the key prefix and ``ends``; ``purge`` deletes each dead item with a
    ``DeleteItem`` conditional on it being dead still, so a session written since the scan
    stays. They cover Flask-Session's items too when they are read: the tables Flask-Session
    0.8 creates have no TTL (its call enabling it fails unseen), so there ``purge`` is the
    clean-up (from cron, say). ``SESSION_TYPE = "dynamodb"`` sets ``ttl_attribute`` to their
    ``expiration``, so a table whose TTL was enabled on it expires both kinds of item.

    Limits: an item holds 400 KB, names and values together (a larger session is refused
    with ``ValueError``), and a field name 64 KB. An update expression holds 300 operators
    and 4 KB, so a write naming more than 100 fields goes out as several conditional
    updates, each atomic but not all at once. The condition checks the item's attributes,
    not each value inside ``f``: an item damaged inside its map reads as no session, but an
    update from a request that loaded it before the damage still applies.
    """

    max_key_length: ClassVar[int | None] = _MAX_KEY_BYTES

    def __init__(
        self,
        *,
        table: str = "sessions",
        client: Any = None,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        create_table: bool = True,
        ttl_attribute: str = "expires",
    ) -> None:
        super().__init__()
        if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
            raise ValueError("table must be a DynamoDB table name: 3 to 255 of A-Z a-z 0-9 "
                             f"_ - . (not {table!r})")
        if not isinstance(create_table, bool):
            raise TypeError("create_table must be True or False")
        if not isinstance(ttl_attribute, str):
            raise TypeError("ttl_attribute must be a str")
        if not 0 < len(ttl_attribute.encode()) <= 255:  # DynamoDB's limit for a TTL attribute
            raise ValueError("ttl_attribute must be an attribute name of 1 to 255 bytes")
        if ttl_attribute in (_KEY, "f", "permanent", "ttl", "ends", "val"):
            raise ValueError(f"ttl_attribute {ttl_attribute!r} is an attribute the items hold "
                             "already; name another")
        explicit = {
            "region_name": region_name, "endpoint_url": endpoint_url,
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
        }
        for option, value in explicit.items():
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"{option} must be a non-empty str")
        if client is not None:
            given = [option for option, value in explicit.items() if value is not None]
            if given:
                raise ValueError(f"give client or {given[0]}, not both")
            settings = _from_client(client)
        else:
            settings = _from_options(region_name, endpoint_url, aws_access_key_id,
                                     aws_secret_access_key, aws_session_token)
        _check_region(settings.region_name)
        self.table = table
        self.ttl_attribute = ttl_attribute
        self._settings = settings
        self._create_table = create_table
        self._loader = botocore.loaders.create_loader()
        self.location = f"dynamodb://{settings.region_name}/{table}" + (
            f" via {_bare(settings.endpoint_url)}" if settings.endpoint_url else ""
        )

    def _new_client(self) -> _Connection:
        return _Connection(self._settings, self._loader)

    async def _close_client(self, client: _Connection) -> None:
        await client.close()

    async def _run(self, call: Callable[[DynamoDBClient], Awaitable[T]]) -> T:
        """``call`` on this loop's client; a missing table is created (if allowed) and the
        call made again. An item over DynamoDB's size limit is a clear ``ValueError``."""
        connection = self.client
        client = await connection.get()
        try:
            try:
                return await call(client)
            except ClientError as exc:
                if not (self._create_table and _code(exc) == "ResourceNotFoundException"):
                    raise
            async with connection.lock:
                await self._ensure_table(client)
            return await call(client)
        except ClientError as exc:
            if _too_large(exc):
                raise ValueError(
                    "session too large for DynamoDB: an item holds at most 400 KB, field "
                    f"names and values together ({exc})"
                ) from exc
            raise

    async def _ensure_table(self, client: DynamoDBClient) -> None:
        try:
            await client.create_table(
                TableName=self.table, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": _KEY, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": _KEY, "KeyType": "HASH"}],
            )
            created = True
        except ClientError as exc:
            if _code(exc) != "ResourceInUseException":
                raise
            created = False  # there already, or being created by another process
        await client.get_waiter("table_exists").wait(
            TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
        if not created:
            return
        try:
            await client.update_time_to_live(
                TableName=self.table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": self.ttl_attribute},
            )
        except (ClientError, BotoCoreError) as exc:
            # Sessions still expire on load; only the clean-up of dead ones is missing.
            logger.warning(
                "created DynamoDB table %r but could not enable TTL on %r (%s); "
                "expired sessions stay until deleted", self.table, self.ttl_attribute, exc,
            )

    def _key(self, key: str) -> dict[str, AttributeValueTypeDef]:
        return {_KEY: {"S": key}}

    async def _get(self, key: str) -> Item | None:
        reply = await self._run(lambda client: client.get_item(
            TableName=self.table, Key=self._key(key), ConsistentRead=True,
        ))
        return reply.get("Item")

    async def _fetch(self, key: str) -> tuple[bytes, Decimal] | _Found | None:
        """The item under ``key``: Flask-Session's (value, expiration), or ours parsed;
        ``None`` if absent. Raises ``_NotOurs`` for any other item."""
        item = await self._get(key)
        if item is None:
            return None
        theirs = _their_item(item) if self.reads_flask_session else None
        return theirs if theirs is not None else _parse(item, self.ttl_attribute)

    async def load(self, key: str, *, touch: bool) -> Record | None:
        try:
            found = await self._fetch(key)
            if isinstance(found, tuple):
                data, expiration = found
                if expiration <= Decimal(_their_now()):
                    return None
                # Never touched (their lifetime is not stored): the next write replaces it.
                return flask_session.read(self, key, data)
        except _NotOurs as exc:
            self.unreadable(key, str(exc))
            return None
        if found is None:
            return None
        now = time.time()
        left = found.ends - Decimal(now)
        if left <= 0:
            return None  # TTL has not got round to it
        ends = _time(now + found.ttl)
        if touch and left < Decimal(found.ttl) / 2 and Decimal(ends["N"]) > found.ends:
            try:
                await self._run(lambda client: client.update_item(
                    TableName=self.table, Key=self._key(key),
                    UpdateExpression="SET #x = :ends, #e = :exp",
                    ConditionExpression="#x = :seen AND #t = :ttl",
                    ExpressionAttributeNames={"#x": "ends", "#e": self.ttl_attribute,
                                              "#t": "ttl"},
                    ExpressionAttributeValues={
                        ":ends": ends, ":exp": _number(math.ceil(now + found.ttl)),
                        ":seen": {"N": found.ends_text}, ":ttl": _number(found.ttl),
                    },
                ))
            except ClientError as exc:
                if _code(exc) != "ConditionalCheckFailedException":
                    raise
                # Written or deleted since the read: a write set its own expiry.
        return found.record

    async def store(self, key: str, write: Write) -> bool:
        changed = {_stored_name(name): _value(value) for name, value in write.changed.items()}
        removed = [_stored_name(name) for name in dict.fromkeys(write.removed)
                   if name not in write.changed]
        if write.create:
            assert write.permanent is not None  # see Write
            assert write.ttl is not None
            if not changed:
                await self.delete(key)  # a record without fields is none
                return True
            permanent, ttl = write.permanent, write.ttl

            def put(client: DynamoDBClient) -> Awaitable[Any]:
                # The expiry counts from the call itself: a first write may wait for the
                # table to be created, and the retry must not start the session half-expired.
                item: dict[str, AttributeValueTypeDef] = {
                    **self._key(key), "f": {"M": changed}, "permanent": {"BOOL": permanent},
                    "ttl": _number(ttl), **_ending(time.time(), ttl, self.ttl_attribute),
                }
                # A new id: whatever is under it is another program's, replaced whole.
                return client.put_item(TableName=self.table, Item=item)

            await self._run(put)
            return True
        return await self._update(key, write, changed, removed)

    async def _update(self, key: str, write: Write, changed: dict[str, AttributeValueTypeDef],
                      removed: list[str]) -> bool:
        paths: list[tuple[str, AttributeValueTypeDef | None]] = [*changed.items()]
        paths += [(name, None) for name in removed]
        chunks = [paths[i:i + _MAX_PATHS] for i in range(0, len(paths), _MAX_PATHS)] or [[]]
        emptying = bool(removed) and not changed
        now = time.time()
        attributes: Mapping[str, AttributeValueTypeDef] = {}
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            names = {**_NAMES, "#e": self.ttl_attribute}
            values: dict[str, AttributeValueTypeDef] = {**_TYPES, ":now": _time(now)}
            sets: list[str] = []
            removes: list[str] = []
            for i, (name, value) in enumerate(chunk):
                names[f"#{i}"] = name
                if value is None:
                    removes.append(f"#f.#{i}")
                else:
                    values[f":{i}"] = value
                    sets.append(f"#f.#{i}=:{i}")
            if index == 0:
                sets += _lifetime(write, now, values)
            expression = " ".join(
                [*(["SET " + ",".join(sets)] if sets else []),
                 *(["REMOVE " + ",".join(removes)] if removes else [])]
            )
            written = await self._update_item(
                key, expression, names, values, "ALL_NEW" if emptying and last else "NONE"
            )
            if written is None:
                return False  # deleted, expired or not ours: nothing to update
            attributes = written
        if emptying and attributes.get("f", {}).get("M") == {}:
            await self._delete_if_empty(key)
        return True

    async def _update_item(
        self, key: str, expression: str, names: dict[str, str],
        values: dict[str, AttributeValueTypeDef], returns: Literal["ALL_NEW", "NONE"],
    ) -> Mapping[str, AttributeValueTypeDef] | None:
        """One conditional update of a live item of ours; ``None`` if there is none."""
        try:
            reply = await self._run(lambda client: client.update_item(
                TableName=self.table, Key=self._key(key), UpdateExpression=expression,
                ConditionExpression=_LIVE, ExpressionAttributeNames=names,
                ExpressionAttributeValues=values, ReturnValues=returns,
            ))
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        return reply.get("Attributes", {})

    async def _delete_if_empty(self, key: str) -> None:
        try:
            await self._run(lambda client: client.delete_item(
                TableName=self.table, Key=self._key(key),
                ConditionExpression="size(#f) = :zero",
                ExpressionAttributeNames={"#f": "f"},
                ExpressionAttributeValues={":zero": _number(0)},
            ))
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            # A field another request added meanwhile keeps the session alive.

    async def delete(self, key: str) -> None:
        await self._run(lambda client: client.delete_item(
            TableName=self.table, Key=self._key(key)
        ))

    # -- the CLI's (see base.py) ---------------------------------------------------------------

    purges_expired = True  # TTL deletes days late, and Flask-Session's tables have none

    async def count(self, prefix: str) -> int | None:
        found = 0
        async for page in self._scan(prefix, ">", Select="COUNT"):
            found += page.get("Count", 0)
        return found

    async def expires_at(self, key: str) -> float | None:
        try:
            found = await self._fetch(key)
        except _NotOurs:
            return None
        if found is None:
            return None
        if isinstance(found, tuple):
            ends = float(found[1]) + time.time() - _their_now()  # on the Unix clock
        else:
            ends = float(found.ends)
        return ends if ends > time.time() else None

    async def purge(self, prefix: str, *, batch: int, dry_run: bool) -> AsyncIterator[int]:
        if dry_run:
            found = 0
            async for page in self._scan(prefix, "<=", Select="COUNT"):
                found += page.get("Count", 0)
            if found:
                yield found
            return
        keys: list[str] = []
        async for page in self._scan(prefix, "<=", ProjectionExpression="#k"):
            keys += [item[_KEY]["S"] for item in page.get("Items", [])]
            while len(keys) >= batch or (keys and "LastEvaluatedKey" not in page):
                chunk, keys = keys[:batch], keys[batch:]
                gone = sum(await asyncio.gather(*map(self._delete_dead, chunk)))
                if gone:
                    yield gone

    def _ended(self, op: Literal[">", "<="]) -> tuple[str, dict[str, str],
                                                      dict[str, AttributeValueTypeDef]]:
        """The condition on items of this store (and Flask-Session's, if read) whose end is
        ``op`` now: live (``">"``) or dead (``"<="``), with its names and values."""
        names = {**_NAMES, "#e": self.ttl_attribute}
        values: dict[str, AttributeValueTypeDef] = {**_TYPES, ":now": _time(time.time())}
        condition = f"{_OURS} AND #x {op} :now"
        if self.reads_flask_session:
            names.update(_THEIR_NAMES)
            values.update({**_THEIR_TYPES, ":then": _time(_their_now())})
            # (DynamoDB refuses redundant parentheses, so only here.)
            condition = f"({condition}) OR ({_THEIRS} AND #xp {op} :then)"
        return condition, names, values

    async def _scan(self, prefix: str, op: Literal[">", "<="],
                    **options: Any) -> AsyncIterator[Mapping[str, Any]]:
        """The pages of a scan for items under ``prefix`` that :meth:`_ended` with ``op``."""
        condition, names, values = self._ended(op)
        if prefix:  # DynamoDB refuses unused placeholders: #k and :prefix only if used
            if self.reads_flask_session:  # an OR
                condition = f"({condition})"
            condition = f"begins_with(#k, :prefix) AND {condition}"
            values[":prefix"] = {"S": prefix}
        if prefix or "ProjectionExpression" in options:
            names["#k"] = _KEY
        request: dict[str, Any] = {
            "TableName": self.table, "FilterExpression": condition,
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values, **options,
        }
        while True:
            page: Mapping[str, Any] = await self._run(lambda client: client.scan(**request))
            yield page
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def _delete_dead(self, key: str) -> int:
        """Delete the item under ``key`` if it is still dead now: 1 if it went, else 0."""
        condition, names, values = self._ended("<=")
        try:
            await self._run(lambda client: client.delete_item(
                TableName=self.table, Key=self._key(key), ConditionExpression=condition,
                ExpressionAttributeNames=names, ExpressionAttributeValues=values,
            ))
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return 0  # written (so revived) since the scan
            raise
        return 1


def _ending(now: float, ttl: int, expires: str) -> dict[str, AttributeValueTypeDef]:
    return {"ends": _time(now + ttl), expires: _number(math.ceil(now + ttl))}


def _lifetime(write: Write, now: float, values: dict[str, AttributeValueTypeDef]) -> list[str]:
    """The SET actions that restart the item's lifetime: its own (``:now`` is in ``values``
    already), or the write's."""
    if write.permanent is None:
        values[":up"] = _number(math.ceil(now))
        return ["#x=:now+#t", "#e=:up+#t"]
    assert write.ttl is not None
    values.update({":p": {"BOOL": write.permanent}, ":ttl": _number(write.ttl),
                   ":ends": _time(now + write.ttl), ":exp": _number(math.ceil(now + write.ttl))})
    return ["#p=:p", "#t=:ttl", "#x=:ends", "#e=:exp"]


def _bare(url: str) -> str:
    """``url`` without credentials, query or fragment, for the location."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _environment(profile: str | None) -> tuple[str | None, Config | None]:
    """The region the AWS configuration names, and the client config to add to it.

    Retries: botocore's "standard" mode unless the configuration picks one. Its default
    "legacy" mode keeps retrying a refused connection for 26 s (measured), far past any
    request's timeout; "standard" (AWS's recommendation) gives up after 3 attempts (~2 s).
    """
    try:
        session = botocore.session.Session(profile=profile)
        region = session.get_config_variable("region")
        chosen = "AWS_RETRY_MODE" in os.environ or "retry_mode" in session.get_scoped_config()
    except BotoCoreError as exc:
        raise ValueError(f"cannot read the AWS configuration: {exc}") from exc
    config = None if chosen else Config(retries={"mode": "standard"})
    return (region if isinstance(region, str) and region else None), config


def _check_region(region: str) -> None:
    try:
        validate_region_name(region)
    except BotoCoreError:
        raise ValueError(f"region_name {region!r} is no AWS region name (like 'eu-west-1'); "
                         "check the option, AWS_DEFAULT_REGION or the profile's region"
                         ) from None


def _check_endpoint(url: str) -> None:
    """Refuse at init what botocore would refuse at the first request."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError as exc:
        raise ValueError(f"endpoint_url {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
        raise ValueError("endpoint_url must be an http:// or https:// URL with a host, "
                         f"like http://127.0.0.1:8000 (not {url!r})")


def _from_options(
    region_name: str | None, endpoint_url: str | None, access_key: str | None,
    secret_key: str | None, token: str | None,
) -> _Settings:
    if endpoint_url is not None:
        _check_endpoint(endpoint_url)
    if (access_key is None) != (secret_key is None):
        raise ValueError("aws_access_key_id and aws_secret_access_key go together")
    if token is not None and access_key is None:
        raise ValueError("aws_session_token needs aws_access_key_id and its secret")
    region, config = _environment(None)
    region = region_name or region
    if region is None:
        raise ValueError("region_name is needed: pass it, or set AWS_DEFAULT_REGION or a "
                         "profile's region")
    return _Settings(region, endpoint_url, access_key, secret_key, token, config=config)


def _static_keys(credentials: Any) -> dict[str, str | None]:
    """Fixed keys to hand every loop's client; none for credentials that renew themselves
    (their refresh belongs to one event loop, or is blocking)."""
    if type(credentials) not in (Credentials, AioCredentials):
        return {}
    return {"aws_access_key_id": credentials.access_key,
            "aws_secret_access_key": credentials.secret_key,
            "aws_session_token": credentials.token}


def _from_client(client: Any) -> _Settings:
    meta: Any = getattr(client, "meta", None)
    if not isinstance(client, BaseClient) and isinstance(getattr(meta, "client", None),
                                                         BaseClient):
        client = meta.client  # a boto3 resource (Flask-Session's SESSION_DYNAMODB)
    if isinstance(client, BaseClient):  # a boto3 or aiobotocore client
        meta = client.meta
        if meta.service_model.service_name != "dynamodb":
            raise TypeError(f"client must be a DynamoDB client, not one for "
                            f"{meta.service_model.service_name!r}")
        # The endpoint only if the user set one: a client's resolved AWS endpoint follows
        # the region (and FIPS, dual-stack) settings already reused.
        resolver: Any = getattr(client, "_ruleset_resolver", None)
        builtins: Any = getattr(resolver, "_builtins", None)
        endpoint = builtins.get("SDK::Endpoint") if isinstance(builtins, dict) else None
        signer: Any = getattr(client, "_request_signer", None)
        return _Settings(
            meta.region_name, endpoint if isinstance(endpoint, str) else None,
            config=meta.config, **_static_keys(getattr(signer, "_credentials", None)),
        )
    session: Any = client
    wrapped = getattr(client, "_session", None)
    if not isinstance(client, botocore.session.Session) and isinstance(
        wrapped, botocore.session.Session
    ):
        session = wrapped  # boto3.Session, found by duck typing: boto3 stays optional
    if isinstance(session, botocore.session.Session):
        profile = session.profile if session.profile != "default" else None
        try:
            region = session.get_config_variable("region")
        except BotoCoreError as exc:  # its profile is not in the AWS configuration
            raise ValueError(f"client: cannot read the session's configuration: {exc}"
                             ) from exc
        if not isinstance(region, str) or not region:
            raise ValueError("client: the session has no region; give it one")
        keys = _static_keys(getattr(session, "_credentials", None))
        return _Settings(region, profile=profile, config=session.get_default_client_config(),
                         **keys)
    raise TypeError(
        "client must be a DynamoDB client, resource or session of aiobotocore or boto3, e.g. "
        "boto3.client('dynamodb', region_name='eu-west-1'), "
        f"not {type(client).__qualname__}"
    )
