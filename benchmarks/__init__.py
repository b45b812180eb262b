"""Benchmarks for asyncsessions against Flask-Session, quart-session and a sequential baseline.

Run ``python -m benchmarks`` (or ``nox -s bench``); see ``benchmarks/__main__.py`` for flags.
Stages: the Flask bridge's overhead, the latency matrix (``inprocess``), session size
(``scaling``), three server stores, throughput (``load``), a gunicorn worker's memory
(``memory``), the serializer experiment (``serializer``) and, with ``--profile``,
pyinstrument profiles (``profiling``). ``report`` turns the results into results.md,
results.png and scaling.png.
"""
