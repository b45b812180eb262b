"""``python -m benchmarks``: asyncsessions vs Flask-Session, quart-session and sequential.

Flags: ``--quick`` (a smoke run in well under a minute), ``--latency 0,1,5,20`` (added
round-trip times in ms; default 0,1,5, or 0,5 with --quick; +20 ms is no target's and is left
out to keep the full run near 8 minutes on 2 cores), ``--out benchmarks/results``
(where results.md, results.png and results.json go), ``--wsgi auto|werkzeug|gunicorn``,
``--clients 8`` (concurrent HTTP clients), ``--profile`` (pyinstrument profiles of the
zero-latency Flask path, standard and 200-field sessions), ``--only scaling,memory,…`` (run
some stages only; see ``run.STAGES``). ``python -m benchmarks.serializer`` runs the
serializer experiment alone.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import NoReturn


def _latencies(text: str) -> list[int | float]:
    values: list[int | float] = []
    for part in text.split(","):
        value = float(part)
        if not 0 <= value <= 1000:
            raise argparse.ArgumentTypeError(f"latency {part!r} must be 0..1000 ms")
        values.append(int(value) if value.is_integer() else value)
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split(
        "\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    parser.add_argument("--latency", type=_latencies, default=None, metavar="MS,MS,…",
                        help="added round-trip times in ms (default 0,1,5; quick: 0,5)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="output folder (default benchmarks/results)")
    parser.add_argument("--wsgi", choices=["auto", "werkzeug", "gunicorn"], default="auto",
                        help="Flask's server for req/s (auto: gunicorn gthread if installed)")
    parser.add_argument("--clients", type=int, default=8,
                        help="concurrent keep-alive HTTP clients (default 8)")
    parser.add_argument("--profile", action="store_true",
                        help="also write pyinstrument profiles of the Flask path")
    parser.add_argument("--only", type=_stages, default=(), metavar="STAGE,…",
                        help="run only these stages (" + ", ".join(_stage_names()) + ")")
    return parser


def _stage_names() -> tuple[str, ...]:
    from .run import STAGES

    return STAGES


def _stages(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in _stage_names()]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {', '.join(unknown)}")
    return names


def _terminate(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds: servers and proxy are stopped


def main() -> int:
    """Parse the flags and run the benchmarks."""
    args = _parser().parse_args()
    latencies = args.latency or ([0, 5] if args.quick else [0, 1, 5])
    signal.signal(signal.SIGTERM, _terminate)
    from .run import main as run

    return run(quick=args.quick, latencies=latencies, out=args.out, wsgi=args.wsgi,
               clients=max(1, args.clients), profile=args.profile, only=args.only)


if __name__ == "__main__":
    sys.exit(main())
