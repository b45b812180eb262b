"""Per-request latency of each scenario through Flask's test client, in this process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scenario:
    """One kind of request."""

    key: str
    label: str
    method: str
    path: str
    cookies: bool = True
    #: What a fresh client first requests to put its session in place.
    setup: str = "/setup"


SCENARIOS = [
    Scenario("read", "read-only", "GET", "/read"),
    Scenario("write-one", "change one field", "POST", "/write-one"),
    Scenario("write-all", "change a field in every store", "POST", "/write-all"),
    Scenario("login", "login (regenerate + user_id)", "POST", "/login"),
    Scenario("no-cookie", "no cookie, session never read", "GET", "/nosession", cookies=False),
]


@dataclass(frozen=True)
class Budget:
    """How many requests a measurement makes: at least n_min, at most n_max, ~seconds long."""

    seconds: float
    n_min: int
    n_max: int
    warmup: int


@dataclass
class Cell:
    """Per-request times (seconds), backend exchanges and bytes sent to the stores per
    request of one measurement, and the median of each round."""

    samples: list[float]
    exchanges: float
    sent: float | None = None
    rounds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=20, method="inclusive")[18]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"median": self.median, "p95": self.p95, "n": len(self.samples),
                               "exchanges": self.exchanges, "rounds": self.rounds}
        if self.sent is not None:
            out["sent"] = self.sent
        return out


def _check(response: Any, what: str) -> None:
    status = response.status_code
    body = response.get_data(as_text=True)[:500]
    response.close()
    if status != 200:
        raise RuntimeError(f"{what}: HTTP {status}: {body}")


class _Series:
    """One config's client for one scenario, measured a batch at a time."""

    def __init__(self, app: Any, scenario: Scenario, count: Callable[[], int],
                 warmup: int, sent: Callable[[], int] | None = None) -> None:
        self.scenario = scenario
        self.count = count
        self.sent = sent
        self.what = f"{app.name} {scenario.key}"
        self.client = app.test_client(use_cookies=scenario.cookies)
        self.samples: list[float] = []
        self.rounds: list[float] = []
        self.exchanges = 0
        self.bytes = 0
        if scenario.cookies:
            _check(self.client.get(scenario.setup), self.what + " setup")
        for _ in range(warmup):
            _check(self.client.open(scenario.path, method=scenario.method), self.what)

    def batch(self, n_min: int, n_max: int, seconds: float) -> None:
        """At least n_min and at most n_max requests, stopping after ``seconds`` if n_min."""
        path, method = self.scenario.path, self.scenario.method
        done = 0
        before = self.count()
        sent_before = self.sent() if self.sent is not None else 0
        deadline = time.perf_counter() + seconds
        first = len(self.samples)
        while done < n_max and (done < n_min or time.perf_counter() < deadline):
            started = time.perf_counter()
            response = self.client.open(path, method=method)
            self.samples.append(time.perf_counter() - started)
            _check(response, self.what)
            done += 1
        self.exchanges += self.count() - before
        if self.sent is not None:
            self.bytes += self.sent() - sent_before
        self.rounds.append(statistics.median(self.samples[first:]))


def measure(apps: dict[str, Any], scenario: Scenario, budget: Budget,
            counters: dict[str, Callable[[], int]], *, rounds: int = 5,
            failed: Callable[[str, Exception], None],
            sent: dict[str, Callable[[], int]] | None = None) -> dict[str, Cell]:
    """Time ``scenario`` on every app, interleaved in ``rounds`` batches (so that a burst of
    load on the machine hits every config alike); ``counters[key]()`` reads the proxy's
    exchange counter for that app's stores, ``sent[key]()`` the bytes the app sent them. A
    failing app is reported and left out."""
    series: dict[str, _Series] = {}
    for key, app in apps.items():
        try:
            series[key] = _Series(app, scenario, counters[key], budget.warmup,
                                  None if sent is None else sent[key])
        except Exception as exc:
            failed(key, exc)
    n_min = max(1, -(-budget.n_min // rounds))
    n_max = max(n_min, budget.n_max // rounds)
    for round_no in range(rounds):
        keys = list(series)
        shift = round_no % max(1, len(keys))
        for key in keys[shift:] + keys[:shift]:
            try:
                series[key].batch(n_min, n_max, budget.seconds / rounds)
            except Exception as exc:
                del series[key]
                failed(key, exc)
    return {
        key: Cell(s.samples, s.exchanges / len(s.samples),
                  None if s.sent is None else s.bytes / len(s.samples), s.rounds)
        for key, s in series.items()
    }
