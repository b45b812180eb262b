"""Benchmarks for asyncsessions against Flask-Session, quart-session and a sequential baseline.

Run ``python -m benchmarks`` (or ``nox -s bench``); see ``benchmarks/__main__.py`` for flags.
"""
