"""``SESSION_CONFIG`` parsed once, at ``init_app``, into frozen store settings."""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from werkzeug.sansio.response import Response

from . import dialects
from .backends import flask_session
from .backends.base import Backend, ClientSideBackend, Store
from .errors import SessionConfigWarning

__all__ = [
    "BACKENDS", "CookieSettings", "FieldSelector", "Settings", "StoreConfig", "parse_config",
    "parse_settings",
]

#: Registered ``session_type`` names, imported lazily so a missing driver only matters when used.
BACKENDS: dict[str, tuple[str, str]] = {
    "secure_cookie": ("asyncsessions.backends.secure_cookie:SecureCookieBackend", ""),
    "filesystem": ("asyncsessions.backends.filesystem:FilesystemBackend", ""),
    "redis": ("asyncsessions.backends.redis:RedisBackend", "redis"),
    "mongodb": ("asyncsessions.backends.mongodb:MongoDBBackend", "mongodb"),
    "memcache": ("asyncsessions.backends.memcache:MemcacheBackend", "memcached"),
    "memcached": ("asyncsessions.backends.memcache:MemcacheBackend", "memcached"),
    "firestore": ("asyncsessions.backends.firestore:FirestoreBackend", "firestore"),
    "sqlalchemy": ("asyncsessions.backends.sqlalchemy:SQLAlchemyBackend", "sqlalchemy"),
    "peewee": ("asyncsessions.backends.peewee:PeeweeBackend", "peewee"),
    "cachelib": ("asyncsessions.backends.cachelib:CacheLibBackend", "cachelib"),
    "null": ("asyncsessions.backends.null:NullBackend", ""),
    "dynamodb": ("asyncsessions.backends.dynamodb:DynamoDBBackend", "dynamodb"),
    "datastore": ("asyncsessions.backends.datastore:DatastoreBackend", "datastore"),
    "elasticsearch": ("asyncsessions.backends.elasticsearch:ElasticsearchBackend",
                      "elasticsearch"),
    "opensearch": ("asyncsessions.backends.elasticsearch:ElasticsearchBackend", "elasticsearch"),
}

_DAY = 86400
_COMMON_KEYS = frozenset(
    {
        "cookie_name",
        "session_type",
        "session_fields",
        "cookie_domain",
        "cookie_path",
        "cookie_httponly",
        "cookie_secure",
        "cookie_max_age",
        "cookie_samesite",
        "cookie_partitioned",
        "session_lifetime",
        "session_permanent_lifetime",
        "key_prefix",
        "use_signer",
        "read_flask_session",
        "on_error",
        "timeout",
        "index_by",
        "index_lifetime",
    }
)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """Which session fields a store owns."""

    mode: Literal["all", "include", "exclude", "auto"]
    names: frozenset[str] = frozenset()

    def owns(self, field: str, named_elsewhere: frozenset[str]) -> bool:
        if self.mode == "all":
            return True
        if self.mode == "include":
            return field in self.names
        if self.mode == "exclude":
            return field not in self.names
        return field not in named_elsewhere


@dataclass(frozen=True, slots=True)
class CookieSettings:
    """The attributes of one store's cookie."""

    name: str
    domain: str | None
    path: str
    httponly: bool
    secure: bool
    samesite: str | None
    partitioned: bool
    max_age: int | None


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """One ``SESSION_CONFIG`` entry, validated."""

    index: int
    backend: Store
    fields: FieldSelector
    cookie: CookieSettings
    lifetime: int
    permanent_lifetime: int
    key_prefix: str
    use_signer: bool
    #: Also read live Flask-Session records and signed ids (see Store.reads_flask_session).
    read_flask_session: bool
    on_error: Literal["raise", "degrade"]
    timeout: float
    #: Fields whose value finds the store's sessions (``revoke_sessions``), and how long an
    #: index record lives after the last write of a session it lists.
    index_by: tuple[str, ...] = ()
    index_lifetime: int = 0

    @property
    def name(self) -> str:
        return self.cookie.name


def _entry_error(index: int, key: str, message: str) -> ValueError:
    # A plain ValueError: no private class in the user's traceback.
    return ValueError(f"SESSION_CONFIG[{index}] {key!r}: {message}")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the app's config says about sessions."""

    stores: tuple[StoreConfig, ...]
    #: Whether a new session starts permanent (``SESSION_PERMANENT``).
    permanent: bool
    refresh_each_request: bool


#: Fields other extensions keep in the session: losing them silently breaks those extensions.
WELL_KNOWN_FIELDS = ("_flashes", "_user_id", "_fresh", "_id", "_remember", "csrf_token")


def parse_settings(config: Mapping[str, Any], *, instance_path: str) -> Settings:
    """The app's session settings, validated once; ``ValueError`` names the key at fault."""
    refresh = config.get("SESSION_REFRESH_EACH_REQUEST", True)
    if not isinstance(refresh, bool):
        raise ValueError(f"SESSION_REFRESH_EACH_REQUEST: expected True or False, not {refresh!r}")
    return Settings(
        parse_config(config, instance_path=instance_path),
        dialects.permanent_default(config),
        refresh,
    )


def parse_config(config: Mapping[str, Any], *, instance_path: str) -> tuple[StoreConfig, ...]:
    """Validate the app's stores; ``ValueError`` names the entry and key at fault.

    Without ``SESSION_CONFIG``, Flask-Session's ``SESSION_TYPE`` keys (and Flask-Session2's,
    flask-beaker-session's) describe one store; without either, one signed cookie holds the
    session, as in Flask.
    """
    dialects.check_keys(config)
    entries = config.get("SESSION_CONFIG")
    defaults = dialects.app_defaults(config)
    explicit = entries is not None
    if entries is None:
        if config.get("SESSION_TYPE") is not None:
            entries = [dialects.legacy_entry(config)]
        else:
            entries = [{"cookie_name": config.get("SESSION_COOKIE_NAME") or "session"}]
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
        raise ValueError("SESSION_CONFIG must be a list of dicts, one per store")
    if not entries:
        raise ValueError("SESSION_CONFIG is empty: configure at least one store")
    stores = tuple(
        _parse_entry(i, {**defaults, **entry} if isinstance(entry, Mapping) else entry, config)
        for i, entry in enumerate(entries)
    )
    for store in stores:
        store.backend.bind(name=store.name, instance_path=instance_path)
        if explicit and store.read_flask_session and not isinstance(
                store.backend, flask_session.ReadsFlaskSession):
            # SESSION_TYPE configs turn it on for every type: there it only accepts the ids
            # Flask-Session signed, and its records (pickles) read as no session.
            raise _entry_error(
                store.index, "read_flask_session",
                "this store cannot read Flask-Session's records (it can in redis, memcache, "
                "mongodb, sqlalchemy and dynamodb): remove the key",
            )
        if store.read_flask_session:
            store.backend.reads_flask_session = True
    _check_together(stores)
    _warn_dropped(stores)
    return stores


def _warn_dropped(stores: tuple[StoreConfig, ...]) -> None:
    included = frozenset().union(*(s.fields.names for s in stores if s.fields.mode == "include"))
    dropped = [f for f in WELL_KNOWN_FIELDS
               if not any(s.fields.owns(f, included) for s in stores)]
    if dropped:
        warnings.warn(
            f"no store of SESSION_CONFIG takes the session fields {', '.join(dropped)} "
            "(Flask's flash messages, Flask-Login, Flask-WTF keep them): they would be lost at "
            "every request; give one store session_fields 'auto' (or [])",
            SessionConfigWarning, stacklevel=4,
        )


def _parse_entry(index: int, entry: Any, app: Mapping[str, Any]) -> StoreConfig:
    if not isinstance(entry, Mapping):
        raise ValueError(f"SESSION_CONFIG[{index}] must be a dict, not {type(entry).__name__}")
    entry = dict(entry)  # never mutate the user's config
    name = entry.pop("cookie_name", None)
    if not isinstance(name, str) or not name:
        raise _entry_error(index, "cookie_name", "required, a non-empty string")
    backend, extra_keys = _make_backend(index, entry)
    unknown = set(entry) - _COMMON_KEYS - extra_keys
    if unknown:
        key = sorted(unknown)[0]
        hint = difflib.get_close_matches(key, [*_COMMON_KEYS, *extra_keys], n=1)
        raise _entry_error(
            index, key, "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else "")
        )

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = entry.get(key, default)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int to isinstance, but True is no timeout or max_age.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(t.__name__ for t in kinds)
            raise _entry_error(index, key, f"expected {names}, got {type(value).__name__}")
        return value

    permanent_default = app.get("PERMANENT_SESSION_LIFETIME", timedelta(days=31))
    samesite = get("cookie_samesite", (str, type(None)),
                   app.get("SESSION_COOKIE_SAMESITE") or "Lax")
    if samesite is not None and samesite.capitalize() not in ("Lax", "Strict", "None"):
        raise _entry_error(index, "cookie_samesite", "expected 'Lax', 'Strict', 'None' or None")
    on_error = get("on_error", str, "raise")
    if on_error not in ("raise", "degrade"):
        raise _entry_error(index, "on_error", "expected 'raise' or 'degrade'")
    timeout = float(get("timeout", (int, float), 5.0))
    if not 0 < timeout < math.inf:
        raise _entry_error(index, "timeout", "expected a positive number of seconds")
    key_prefix = get("key_prefix", str, "session:")
    max_age_setting = get("cookie_max_age", (int, timedelta, type(None)), None)
    partitioned = get("cookie_partitioned", bool, app.get("SESSION_COOKIE_PARTITIONED", False))
    if partitioned and "partitioned" not in inspect.signature(Response.set_cookie).parameters:
        raise _entry_error(index, "cookie_partitioned", "needs Werkzeug >= 3.1")
    lifetime = _seconds(
        index, "session_lifetime",
        get("session_lifetime", (int, float, timedelta), timedelta(days=1)),
    )
    permanent_lifetime = _seconds(
        index, "session_permanent_lifetime",
        get("session_permanent_lifetime", (int, float, timedelta), permanent_default),
    )
    max_age: int | None = None
    if max_age_setting is not None:
        # A store's data lives as long as its cookie: a cookie that outlives its data logs
        # the user out early, data that outlives its cookie is unreachable.
        max_age = _seconds(index, "cookie_max_age", max_age_setting)
        for key, seconds in (("session_lifetime", lifetime),
                             ("session_permanent_lifetime", permanent_lifetime)):
            if key in entry and seconds != max_age:
                warnings.warn(
                    f"SESSION_CONFIG[{index}] {key!r} ({seconds} s) is not used: "
                    f"'cookie_max_age' ({max_age} s) sets how long the cookie and its data live",
                    SessionConfigWarning, stacklevel=4,
                )
        lifetime = permanent_lifetime = max_age
    index_by = _index_by(index, entry.get("index_by", ()), backend)
    longest = max(lifetime, permanent_lifetime)
    index_lifetime = 0
    if index_by:
        # Long enough that a session in use (it slides without a write) stays listed;
        # writes of an indexed session restart it.
        index_lifetime = _seconds(
            index, "index_lifetime",
            get("index_lifetime", (int, float, timedelta), 10 * longest),
        )
        if index_lifetime < longest:
            raise _entry_error(index, "index_lifetime", f"{index_lifetime} s is shorter than "
                               f"the sessions it lists live ({longest} s): they would "
                               "escape revoke_sessions")
    elif "index_lifetime" in entry:
        raise _entry_error(index, "index_lifetime", "goes with index_by")
    return StoreConfig(
        index=index,
        backend=backend,
        fields=_parse_fields(index, entry.get("session_fields", [])),
        cookie=CookieSettings(
            name=name,
            domain=get("cookie_domain", (str, type(None)), app.get("SESSION_COOKIE_DOMAIN")),
            path=get("cookie_path", (str, type(None)), None)
            or app.get("SESSION_COOKIE_PATH")
            or app.get("APPLICATION_ROOT")
            or "/",
            httponly=get("cookie_httponly", bool, app.get("SESSION_COOKIE_HTTPONLY", True)),
            secure=get("cookie_secure", bool, app.get("SESSION_COOKIE_SECURE", False)),
            samesite=samesite.capitalize() if samesite else None,
            partitioned=partitioned,
            max_age=max_age,
        ),
        lifetime=lifetime,
        permanent_lifetime=permanent_lifetime,
        key_prefix=key_prefix,
        use_signer=get("use_signer", bool, False),
        read_flask_session=get("read_flask_session", bool, False),
        on_error=on_error,
        timeout=timeout,
        index_by=index_by,
        index_lifetime=index_lifetime,
    )


def _index_by(index: int, value: Any, backend: Store) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(name, str) and name for name in value
    ):
        raise _entry_error(index, "index_by", "expected a list of field names")
    if not value:
        return ()
    if not isinstance(backend, Backend):
        raise _entry_error(index, "index_by", "a cookie store keeps no records to index: "
                                              "index a server-side store")
    if not backend.merges_fields or backend.may_evict:
        reason = ("cannot merge concurrent writes" if not backend.merges_fields
                  else "may drop records before they expire")
        raise _entry_error(index, "index_by", f"this store {reason}, so its index would miss "
                                              "sessions: index a database store")
    return tuple(dict.fromkeys(value))


def _seconds(index: int, key: str, value: int | float | timedelta) -> int:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if not 0 < seconds < math.inf:
        raise _entry_error(index, key, "expected a positive duration")
    return max(1, math.ceil(seconds))


def _make_backend(index: int, entry: dict[str, Any]) -> tuple[Store, frozenset[str]]:
    kind = entry.get("session_type", "secure_cookie")
    if isinstance(kind, Store):
        return kind, frozenset()
    if isinstance(kind, str):
        if kind not in BACKENDS:
            hint = difflib.get_close_matches(kind, BACKENDS, n=1)
            raise _entry_error(
                index, "session_type",
                f"unknown store {kind!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" (known: {', '.join(sorted(BACKENDS))})",
            )
        cls = _import_backend(index, kind)
    elif isinstance(kind, type) and issubclass(kind, Store):
        cls = kind
    else:
        raise _entry_error(
            index, "session_type", "expected a store name, a Backend subclass or instance"
        )
    params = {
        name: p
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    options = {k: entry.pop(k) for k in list(entry) if k in params and k not in _COMMON_KEYS}
    try:
        backend = cls(**options)
    except (TypeError, ValueError) as exc:
        key = next((k for k in options if k in str(exc)), "session_type")
        raise _entry_error(index, key, str(exc)) from exc
    return backend, frozenset(params)


def _import_backend(index: int, kind: str) -> type[Store]:
    target, extra = BACKENDS[kind]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _entry_error(
            index, "session_type",
            f"the {kind!r} store needs its driver: pip install 'asyncsessions[{extra}]' ({exc})",
        ) from exc
    cls: type[Store] = getattr(module, attr)
    return cls


def _parse_fields(index: int, value: Any) -> FieldSelector:
    if value == "auto":
        return FieldSelector("auto")
    if isinstance(value, Mapping):
        keys = set(value)
        if len(keys) != 1 or not keys <= {"include", "exclude"}:
            raise _entry_error(
                index, "session_fields", "a dict must have exactly one key: 'include' or 'exclude'"
            )
        (mode,) = keys
        return FieldSelector(mode, _names(index, value[mode]))
    if isinstance(value, (list, tuple, set, frozenset)):
        names = _names(index, value)
        return FieldSelector("include", names) if names else FieldSelector("all")
    raise _entry_error(
        index, "session_fields", "expected a list of field names, an include/exclude dict or 'auto'"
    )


def _names(index: int, value: Any) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise _entry_error(index, "session_fields", "expected a list of field names")
    if not all(isinstance(v, str) for v in value):
        raise _entry_error(index, "session_fields", "field names must be strings")
    return frozenset(value)


def _check_together(stores: tuple[StoreConfig, ...]) -> None:
    seen: dict[str, int] = {}
    places: dict[tuple[str, str], int] = {}
    auto: int | None = None
    for store in stores:
        location = store.backend.location
        if isinstance(store.backend, Backend) and location is not None:
            # Same server, same prefix: one store's id sent as the other's cookie would load
            # (and at its next write prune) the other store's record.
            other = places.setdefault((location, store.key_prefix), store.index)
            if other != store.index:
                raise _entry_error(
                    store.index, "key_prefix",
                    f"{store.key_prefix!r} at {location} is already used by "
                    f"SESSION_CONFIG[{other}]: give each store its own key_prefix",
                )
        if store.name in seen:
            raise _entry_error(
                store.index, "cookie_name",
                f"{store.name!r} is already used by SESSION_CONFIG[{seen[store.name]}]",
            )
        seen[store.name] = store.index
        if store.fields.mode == "auto":
            if auto is not None:
                raise _entry_error(
                    store.index, "session_fields",
                    f"only one store may be 'auto' (SESSION_CONFIG[{auto}] already is)",
                )
            auto = store.index
        included = frozenset().union(
            *(s.fields.names for s in stores if s.fields.mode == "include")
        )
        for name in store.index_by:
            if not store.fields.owns(name, included):
                raise _entry_error(store.index, "index_by",
                                   f"field {name!r} is not kept by this store (session_fields)")
            cookie = next((other for other in stores if other.fields.owns(name, included)
                           and isinstance(other.backend, ClientSideBackend)), None)
            if cookie is not None:
                # Revoking would delete the record, and the cookie's copy would log back in.
                raise _entry_error(store.index, "index_by",
                                   f"field {name!r} is also kept by the cookie store "
                                   f"SESSION_CONFIG[{cookie.index}]: keep it server-side only")
        try:
            store.backend.check_key_prefix(store.key_prefix)
        except ValueError as exc:
            raise _entry_error(store.index, "key_prefix", str(exc)) from exc
