"""Shared pytest fixtures."""

# server fixtures: redis_server, redis_cluster, memcached_server, mongo_server, firestore_emulator
# (tests/servers.py). tests/ is not a package, so pytest's default "prepend" import mode puts
# this directory on sys.path and the module imports as "servers".
pytest_plugins = ["servers", "app_fixtures"]
