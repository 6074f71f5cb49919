"""Recorded exchange sessions (``../shared/recordings/*.jsonl.gz``), read in place.

The format is one JSON object per line with a field ``t``: ``header``, ``http``
(``url``, ``data``), ``connect`` (``conn``, ``addr``), ``send`` and ``recv``
(``conn``, ``ts``, ``data``: the frame text exactly as the exchange sent it).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

__all__ = ["RecordedHttp", "RecordedMessage", "Recording", "default_recording"]

_RECORDINGS_ENV = "FLIGHT_MD_RECORDINGS"


@dataclass(frozen=True, slots=True)
class RecordedHttp:
    """One recorded REST response.

    Attributes:
        path: URL path, e.g. ``/api/v3/exchangeInfo``.
        query: Query parameters of the recorded request.
        body: Response body, verbatim.
    """

    path: str
    query: tuple[tuple[str, str], ...]
    body: str


@dataclass(frozen=True, slots=True)
class RecordedMessage:
    """One websocket frame the exchange sent.

    Attributes:
        ts: Epoch seconds when it arrived.
        path: URL path of the websocket it arrived on, e.g. ``/v5/public/linear``.
        text: The frame, verbatim.
    """

    ts: float
    path: str
    text: str


@dataclass(frozen=True, slots=True)
class Recording:
    """A whole recorded session.

    Attributes:
        source: The file it was read from.
        exchange: Exchange name from the header, lowercase.
        http: REST responses in recorded order.
        messages: Websocket frames received, in recorded order.
    """

    source: Path
    exchange: str
    http: tuple[RecordedHttp, ...]
    messages: tuple[RecordedMessage, ...]

    @classmethod
    def load(cls, path: Path) -> Recording:
        """Read a recording.

        Args:
            path: A ``.jsonl.gz`` (or plain ``.jsonl``) recording.

        Returns:
            The recording.

        Raises:
            ValueError: If the file is not a recording.
            OSError: If it cannot be read.
        """
        opener = gzip.open if path.suffix == ".gz" else open
        exchange = ""
        http: list[RecordedHttp] = []
        messages: list[RecordedMessage] = []
        paths: dict[str, str] = {}
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    record = json.loads(line)
                    kind = record["t"]
                    if kind == "header":
                        exchange = str(record.get("exchange", "")).lower()
                    elif kind == "http":
                        url = urlsplit(record["url"])
                        query = tuple((k, v) for k, v in parse_qsl(url.query) if k)
                        http.append(RecordedHttp(url.path, query, record["data"]))
                    elif kind == "connect":
                        paths[record["conn"]] = urlsplit(record["addr"]).path
                    elif kind == "recv":
                        messages.append(
                            RecordedMessage(float(record["ts"]), paths.get(record["conn"], ""), record["data"])
                        )
                except (KeyError, TypeError, ValueError) as error:
                    raise ValueError(f"{path}:{number}: not a recording line ({error})") from error
        return cls(path, exchange, tuple(http), tuple(messages))

    def body(self, path: str, **query: str) -> str | None:
        """The first recorded response body for a path whose query includes ``query``.

        Args:
            path: URL path.
            **query: Query parameters the recorded request must have had.

        Returns:
            The body, or ``None`` if nothing matching was recorded.
        """
        for response in self.http:
            if response.path == path and all((k, v) in response.query for k, v in query.items()):
                return response.body
        return None


def default_recording(exchange: str) -> Path:
    """Where the recording of an exchange lives by default.

    ``$FLIGHT_MD_RECORDINGS`` overrides the directory. Otherwise the first that exists of
    ``../shared/recordings`` beside a source checkout of the package, then beside the current
    directory (an installed package lives in site-packages, far from the repository), then
    ``shared/recordings`` under the current directory.

    Args:
        exchange: Exchange id, e.g. ``binance``.

    Returns:
        The path of ``<exchange>.jsonl.gz`` (the first candidate when none exists, so the
        error names a sensible place).
    """
    directory = os.environ.get(_RECORDINGS_ENV)
    if directory:
        return Path(directory) / f"{exchange}.jsonl.gz"
    name = f"{exchange}.jsonl.gz"
    candidates = [
        Path(__file__).resolve().parents[2].parent / "shared" / "recordings" / name,
        Path.cwd().parent / "shared" / "recordings" / name,
        Path.cwd() / "shared" / "recordings" / name,
    ]
    return next((path for path in candidates if path.exists()), candidates[0])
