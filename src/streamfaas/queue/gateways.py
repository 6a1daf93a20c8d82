"""The gateways a queue worker runs jobs through: several, so that one gateway's death loses no
job. Each call goes to the next gateway in turn; one that fails rests a while, and the others
take its calls. Where every gateway rests, they are still tried (soonest back first): a rest is
a preference, never a refusal."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable

# Long enough that calls stop going to a dead pod's address while the Service drops it, short
# enough that a restarted gateway gets calls again soon.
REST_SECONDS = 5.0


def parse_gateway_urls(values: Iterable[str]) -> tuple[str, ...]:
    """Gateway URLs from flags that may each hold several, comma-separated: in order, without
    a trailing slash, each once. ValueError when none is left."""
    urls: list[str] = []
    for value in values:
        for part in value.split(","):
            url = part.strip().rstrip("/")
            if url and url not in urls:
                urls.append(url)
    if not urls:
        raise ValueError("no gateway URL given")
    return tuple(urls)


class GatewayList:
    """Gateway base URLs in turn, skipping the ones resting after a failure."""

    def __init__(self, urls: Iterable[str], *, rest: float = REST_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.urls = parse_gateway_urls(urls)
        self._rest = rest
        self._clock = clock
        self._resting: dict[str, float] = {}  # url -> when it may be tried first again
        self._turn = itertools.count()

    def __str__(self) -> str:
        return ", ".join(self.urls)

    def ordered(self) -> list[str]:
        """Every URL, in the order to try them for one call: the available ones from the next
        in turn, then the resting ones, soonest back first."""
        now = self._clock()
        start = next(self._turn) % len(self.urls)
        rotated = self.urls[start:] + self.urls[:start]
        ready = [u for u in rotated if self._resting.get(u, 0.0) <= now]
        resting = sorted((u for u in rotated if self._resting.get(u, 0.0) > now), key=self._resting.__getitem__)
        return ready + resting

    def failed(self, url: str) -> None:
        self._resting[url] = self._clock() + self._rest

    def succeeded(self, url: str) -> None:
        self._resting.pop(url, None)
