"""The config of Flask-Session, Flask-Session2 and flask-beaker-session, read as one store."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .errors import SessionConfigWarning

__all__ = [
    "LEGACY_TYPES", "LegacyType", "app_defaults", "check_keys", "legacy_entry", "permanent_default",
]


@dataclass(frozen=True, slots=True)
class LegacyType:
    """One ``SESSION_TYPE`` of the libraries users come from, as a store here."""

    store: str
    #: Their app-config key → this store's option.
    keys: Mapping[str, str] = field(default_factory=dict)
    #: This store's options set to their defaults, so live sessions are found where they were.
    defaults: Mapping[str, Any] = field(default_factory=dict)
    libraries: str = "Flask-Session, Flask-Session2"


#: Every ``SESSION_TYPE`` of Flask-Session 0.8, Flask-Session2 and flask-beaker-session. The
#: README's migration table is this table.
LEGACY_TYPES: dict[str, LegacyType] = {
    "null": LegacyType("null", libraries="Flask-Session2 (its default)"),
    "redis": LegacyType("redis", {"SESSION_REDIS": "client"}),
    "memcached": LegacyType("memcache", {"SESSION_MEMCACHED": "client"}),
    "filesystem": LegacyType(
        "filesystem", {"SESSION_FILE_DIR": "directory"}, {"directory": "flask_session"}),
    "mongodb": LegacyType(
        "mongodb",
        {"SESSION_MONGODB": "client", "SESSION_MONGODB_DB": "db",
         "SESSION_MONGODB_COLLECT": "collection"},
        {"db": "flask_session", "collection": "sessions"},
    ),
    # Their table (default "sessions") has another shape: it is read, ours lives beside it.
    "sqlalchemy": LegacyType(
        "sqlalchemy",
        {"SESSION_SQLALCHEMY": "engine", "SESSION_SQLALCHEMY_TABLE": "legacy_table",
         "SESSION_SQLALCHEMY_SCHEMA": "schema"},
        {"table": "asyncsessions", "legacy_table": "sessions"},
    ),
    "dynamodb": LegacyType(
        "dynamodb",
        {"SESSION_DYNAMODB": "client", "SESSION_DYNAMODB_TABLE": "table",
         "SESSION_DYNAMODB_KEY_ID": "aws_access_key_id",
         "SESSION_DYNAMODB_SECRET": "aws_secret_access_key",
         "SESSION_DYNAMODB_REGION": "region_name", "SESSION_DYNAMODB_ENDPOINT": "endpoint_url"},
        # Flask-Session 0.8's table, where its items are, and its TTL attribute.
        {"table": "Sessions", "ttl_attribute": "expiration"},
    ),
    "cachelib": LegacyType("cachelib", {"SESSION_CACHELIB": "client"}, libraries="Flask-Session"),
    "elasticsearch": LegacyType(
        "elasticsearch",
        {"SESSION_ELASTICSEARCH": "client", "SESSION_ELASTICSEARCH_HOST": "url",
         "SESSION_ELASTICSEARCH_INDEX": "index"},
        libraries="Flask-Session2",
    ),
    "datastore": LegacyType(
        "datastore", {"GCLOUD_APP_PROJECT_ID": "project"}, libraries="Flask-Session2"),
    "firestore": LegacyType(
        "firestore", {"SESSION_FIRESTORE": "client", "SESSION_FIRESTORE_COLLECT": "collection"},
        libraries="Flask-Session2",
    ),
    "peewee": LegacyType(
        "peewee", {"SESSION_PEEWEE_CONFIG": "database", "SESSION_PEEWEE_TABLE": "table"},
        libraries="Flask-Session2",
    ),
    "file": LegacyType(
        "filesystem", {"SESSION_DATA_DIR": "directory"}, {"directory": "./.sessions"},
        libraries="flask-beaker-session",
    ),
}

_STORE_KEYS = frozenset(k for legacy in LEGACY_TYPES.values() for k in legacy.keys)
#: Keys of theirs that are honoured without a store option (what they mean here is in the
#: README's migration guide).
_ACCEPTED = frozenset({
    "SESSION_TYPE", "SESSION_PERMANENT", "SESSION_USE_SIGNER", "SESSION_KEY_PREFIX",
    "SESSION_ID_LENGTH", "SESSION_SERIALIZATION_FORMAT", "SESSION_CLEANUP_N_REQUESTS",
    "SESSION_AUTODELETE", "SESSION_FILE_THRESHOLD", "SESSION_FILE_MODE",
    "SESSION_SQLALCHEMY_SEQUENCE", "SESSION_SQLALCHEMY_BIND_KEY",
    "SESSION_DYNAMODB_TABLE_EXISTS", "SESSION_TIMEOUT", "SESSION_EXPIRES", "SESSION_TESTING",
})
#: Flask's own keys, this library's, and other extensions' (Flask-Login's).
_OURS = frozenset({
    "SESSION_CONFIG", "SESSION_REFRESH_EACH_REQUEST", "SESSION_PROTECTION", "SESSION_COOKIE_NAME",
    "SESSION_COOKIE_DOMAIN", "SESSION_COOKIE_PATH", "SESSION_COOKIE_HTTPONLY",
    "SESSION_COOKIE_SECURE", "SESSION_COOKIE_SAMESITE", "SESSION_COOKIE_PARTITIONED",
})
KNOWN_KEYS = _STORE_KEYS | _ACCEPTED | _OURS
#: The longest lifetime browsers keep a cookie for (Chrome caps Max-Age at 400 days), used
#: for flask-beaker-session's sessions that never expire.
_NEVER = timedelta(days=400)


def check_keys(config: Mapping[str, Any]) -> None:
    """Warn once about ``SESSION_*`` keys nobody knows; refuse contradictory mixes."""
    for key in sorted(k for k in config if isinstance(k, str) and k.startswith("SESSION_")):
        if key not in KNOWN_KEYS:
            hint = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            warnings.warn(
                f"{key} is not a setting of asyncsessions, Flask or the libraries it replaces"
                + (f"; did you mean {hint[0]}?" if hint else "") + ": it has no effect",
                SessionConfigWarning, stacklevel=4,
            )
    if config.get("SESSION_CONFIG") is None:
        return
    for key in ("SESSION_TYPE", *sorted(_STORE_KEYS), "SESSION_TIMEOUT", "SESSION_EXPIRES"):
        if key in config:
            raise ValueError(
                f"{key} cannot be combined with SESSION_CONFIG, which configures every store: "
                "move it into the SESSION_CONFIG entry it belongs to "
                "(see the migration guide in the README) or remove SESSION_CONFIG"
            )


def app_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """Entry defaults that app-wide keys of theirs give every ``SESSION_CONFIG`` entry."""
    defaults: dict[str, Any] = {}
    if "SESSION_USE_SIGNER" in config:
        defaults["use_signer"] = _bool(config, "SESSION_USE_SIGNER")
    if "SESSION_KEY_PREFIX" in config:
        defaults["key_prefix"] = config["SESSION_KEY_PREFIX"]
    return defaults


def legacy_entry(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``SESSION_CONFIG`` entry their ``SESSION_TYPE`` config means."""
    kind = config["SESSION_TYPE"]
    legacy = LEGACY_TYPES.get(kind) if isinstance(kind, str) else None
    if legacy is None:
        hint = difflib.get_close_matches(str(kind), LEGACY_TYPES, n=1)
        raise ValueError(
            f"SESSION_TYPE {kind!r} is not a session type"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" (known: {', '.join(sorted(LEGACY_TYPES))}; or use SESSION_CONFIG)"
        )
    for key in sorted(_STORE_KEYS - set(legacy.keys)):
        if key in config:
            raise ValueError(
                f"{key} belongs to another SESSION_TYPE than {kind!r}: remove it or change "
                "SESSION_TYPE"
            )
    beaker = kind == "file"
    lifetime = config.get("PERMANENT_SESSION_LIFETIME", timedelta(days=31))
    if beaker:
        lifetime = config.get("SESSION_TIMEOUT", 1800)
        if not _bool(config, "SESSION_EXPIRES", True):
            lifetime = _NEVER
    entry: dict[str, Any] = {
        "cookie_name": config.get("SESSION_COOKIE_NAME") or "session",
        "session_type": legacy.store,
        # Their stores keep every session for this long, permanent or not.
        "session_lifetime": lifetime,
        "key_prefix": config.get("SESSION_KEY_PREFIX", "session:"),
        "use_signer": _bool(config, "SESSION_USE_SIGNER"),
        # Their users stay logged in: live records are read and rewritten at their next write.
        "read_flask_session": not beaker and kind != "null",
        **legacy.defaults,
    }
    if beaker:
        entry["session_permanent_lifetime"] = lifetime
    for theirs, ours in legacy.keys.items():
        if config.get(theirs) is not None:
            entry[ours] = config[theirs]
    _refuse_unhonourable(config)
    if "SESSION_DYNAMODB_TABLE_EXISTS" in config:
        entry["create_table"] = not _bool(config, "SESSION_DYNAMODB_TABLE_EXISTS")
    if config.get("SESSION_CLEANUP_N_REQUESTS") is not None and legacy.store in (
        "filesystem", "sqlalchemy", "peewee"
    ):
        entry["cleanup_every"] = config["SESSION_CLEANUP_N_REQUESTS"]
    return entry


def permanent_default(config: Mapping[str, Any]) -> bool:
    """Whether new sessions start permanent: Flask-Session's default, not Flask's."""
    legacy = config.get("SESSION_CONFIG") is None and config.get("SESSION_TYPE") not in (
        None, "file")
    return _bool(config, "SESSION_PERMANENT", legacy)


def _refuse_unhonourable(config: Mapping[str, Any]) -> None:
    if config.get("SESSION_ID_LENGTH", 32) != 32:
        raise ValueError(
            "SESSION_ID_LENGTH: ids here are always 32 random bytes (43 characters, "
            "Flask-Session's default); remove the setting (sessions with other ids start "
            "afresh)"
        )
    fmt = config.get("SESSION_SERIALIZATION_FORMAT", "msgpack")
    if fmt not in ("msgpack", "json"):
        raise ValueError(f"SESSION_SERIALIZATION_FORMAT: expected 'msgpack' or 'json', not {fmt!r}")
    if config.get("SESSION_FILE_THRESHOLD") is not None:
        raise ValueError(
            "SESSION_FILE_THRESHOLD: session files here expire by their lifetime, never by "
            "count; remove the setting"
        )
    if config.get("SESSION_FILE_MODE", 0o600) != 0o600:
        raise ValueError("SESSION_FILE_MODE: session files are always 0600; remove the setting")
    if config.get("SESSION_SQLALCHEMY_BIND_KEY") is not None:
        raise ValueError(
            "SESSION_SQLALCHEMY_BIND_KEY: pass the bind's engine as SESSION_SQLALCHEMY "
            "(db.engines[key]) instead"
        )


def _bool(config: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key}: expected True or False, not {value!r}")
    return value
