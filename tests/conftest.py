"""Shared pytest fixtures."""

# server fixtures: redis_server, redis_cluster, memcached_server, mongo_server, firestore_emulator,
# postgres_server, mariadb_server (tests/servers.py); dynamodb_server, datastore_emulator and
# opensearch_server each in a module of its own. tests/ is not a package, so pytest's default
# "prepend" import mode puts this directory on sys.path and the modules import by name.
pytest_plugins = [
    "servers", "app_fixtures", "server_dynamodb", "server_datastore", "server_opensearch",
]
