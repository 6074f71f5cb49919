"""The bus between ingestion and serving nodes: NATS JetStream (issue 16).

An ingestion node publishes every ring's batches (:class:`~flight_md.bus.publisher.Publisher`)
on subjects ``md.<channel>.<exchange>.<symbol>`` (:mod:`flight_md.bus.subjects`) of one stream;
each serving node reads them with a durable consumer of its own
(:class:`~flight_md.bus.consumer.Consumer`) into its store, each batch once
(:mod:`flight_md.bus.ledger`). A message is one Arrow record batch with its producer and
sequence number (:mod:`flight_md.bus.message`). The pure parts (subjects, message, ledger,
backlog, options) import no nats-py; ``publisher``, ``consumer`` and ``connection`` need the
``bus`` extra (``pip install flight-md[bus]``).
"""

from __future__ import annotations

from flight_md.bus.backlog import Backlog, BacklogLimits, BacklogStats, DroppedRun
from flight_md.bus.ledger import Gap, Ledger, Verdict
from flight_md.bus.message import SCHEMA_VERSION, BusMessage, InvalidMessage, decode, encode, new_producer_id
from flight_md.bus.options import BusOptions, StreamLimits
from flight_md.bus.subjects import ALL_SUBJECTS, InvalidSubject, parse_subject, subject_for, validate_filter

__all__ = [
    "ALL_SUBJECTS",
    "SCHEMA_VERSION",
    "Backlog",
    "BacklogLimits",
    "BacklogStats",
    "BusMessage",
    "BusOptions",
    "DroppedRun",
    "Gap",
    "InvalidMessage",
    "InvalidSubject",
    "Ledger",
    "StreamLimits",
    "Verdict",
    "decode",
    "encode",
    "new_producer_id",
    "parse_subject",
    "subject_for",
    "validate_filter",
]
