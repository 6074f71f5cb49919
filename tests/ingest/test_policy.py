"""The reconnect policy, without sockets, sleeps or clocks (flight_md.ingest.policy).

The end-to-end side (real reconnects against the emulator, timed) is in
``tests/e2e/test_ingest_*.py``; here every rule of the README's "Bounded retries" is driven
with plain numbers.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flight_md.ingest.policy import (
    GiveUp,
    PolicySettings,
    ReconnectPolicy,
    backoff_delay,
    retry_after_seconds,
    watchdog_interval,
)


def fixed(value: float):
    return lambda: value


def delays(policy: ReconnectPolicy, failures: int) -> list[float]:
    out = []
    for _ in range(failures):
        policy.failed(websocket=True)
        out.append(policy.next_delay())
    return out


def test_the_delay_doubles_per_failure_up_to_the_cap():
    # jitter 0.999...: the factor is just under 1, so the delays are just under the nominal ones.
    policy = ReconnectPolicy(PolicySettings(reconnect_delay=1.0, max_reconnect_delay=8.0),
                             jitter=fixed(1 - 1e-12))
    assert delays(policy, 7) == pytest.approx([1, 2, 4, 8, 8, 8, 8])


def test_jitter_scales_each_delay_by_a_factor_between_half_and_one():
    low = ReconnectPolicy(PolicySettings(reconnect_delay=1.0, max_reconnect_delay=8.0),
                          jitter=fixed(0.0))
    assert delays(low, 5) == [0.5, 1.0, 2.0, 4.0, 4.0]
    mid = ReconnectPolicy(PolicySettings(reconnect_delay=2.0, max_reconnect_delay=300.0),
                          jitter=fixed(0.5))
    assert delays(mid, 3) == [1.5, 3.0, 6.0]


def test_the_default_random_jitter_differs_between_attempts():
    policy = ReconnectPolicy(PolicySettings(reconnect_delay=1.0, max_reconnect_delay=1.0))
    seen = delays(policy, 20)
    assert all(0.5 <= d < 1.0 for d in seen), seen
    assert len(set(seen)) > 1


@given(failures=st.integers(1, 10_000), base=st.floats(0.001, 100), cap_factor=st.floats(1, 1e6),
       jitter=st.floats(0, 1, exclude_max=True))
def test_every_delay_lies_within_half_and_all_of_the_capped_nominal(failures, base, cap_factor,
                                                                     jitter):
    cap = base * cap_factor
    nominal = min(cap, base * 2.0 ** min(failures - 1, 32))
    delay = backoff_delay(failures, base, cap, jitter)
    assert math.isfinite(delay)
    assert nominal * 0.5 <= delay * (1 + 1e-12) and delay <= nominal * (1 + 1e-12)


def test_a_good_message_resets_the_backoff():
    policy = ReconnectPolicy(PolicySettings(reconnect_delay=1.0, max_reconnect_delay=64.0),
                             jitter=fixed(0.0))
    assert delays(policy, 4) == [0.5, 1.0, 2.0, 4.0]
    policy.good(websocket=True)
    assert policy.failures == 0
    assert delays(policy, 2) == [0.5, 1.0]


def test_a_good_poll_resets_the_backoff_but_not_the_websocket_count():
    policy = ReconnectPolicy(PolicySettings(rest_fallback_after=3), can_fall_back=True)
    for _ in range(2):
        policy.failed(websocket=True)
    policy.good(websocket=False)
    assert policy.failures == 0
    assert policy.ws_failures == 2


def test_it_gives_up_after_max_reconnect_attempts_and_never_when_none():
    policy = ReconnectPolicy(PolicySettings(max_reconnect_attempts=2))
    policy.failed(websocket=True)
    policy.failed(websocket=False)
    with pytest.raises(GiveUp, match="gave up after 2 reconnect attempts"):
        policy.failed(websocket=True)
    zero = ReconnectPolicy(PolicySettings(max_reconnect_attempts=0))
    with pytest.raises(GiveUp):
        zero.failed(websocket=True)
    forever = ReconnectPolicy(PolicySettings(max_reconnect_attempts=None))
    for _ in range(10_000):
        forever.failed(websocket=True)
    assert forever.failures == 10_000


def test_auto_mode_falls_back_after_the_threshold_of_websocket_failures_in_a_row():
    policy = ReconnectPolicy(PolicySettings(rest_fallback_after=3), can_fall_back=True)
    answers = []
    for _ in range(3):
        policy.failed(websocket=True)
        answers.append(policy.should_fall_back())
    assert answers == [False, False, True]
    policy.mode_switched()
    assert not policy.should_fall_back()


def test_a_good_websocket_message_restarts_the_fallback_count():
    policy = ReconnectPolicy(PolicySettings(rest_fallback_after=3), can_fall_back=True)
    for outcome in ("fail", "fail", "good", "fail", "fail"):
        if outcome == "fail":
            policy.failed(websocket=True)
        else:
            policy.good(websocket=True)
    assert not policy.should_fall_back()
    policy.failed(websocket=True)
    assert policy.should_fall_back()


def test_no_fallback_where_the_stream_cannot_poll():
    policy = ReconnectPolicy(PolicySettings(rest_fallback_after=1), can_fall_back=False)
    for _ in range(5):
        policy.failed(websocket=True)
    assert not policy.should_fall_back()


def test_the_default_fallback_threshold_is_three():
    assert PolicySettings().rest_fallback_after == 3


@pytest.mark.parametrize(("headers", "cap", "expected"), [
    ({"Retry-After": "2"}, 300.0, 2.0),
    ({"retry-after": "1.5"}, 300.0, 1.5),
    ({"RETRY-AFTER": "900"}, 60.0, 60.0),          # capped at max_reconnect_delay
    ({"Retry-After": "-3"}, 60.0, 0.0),
    ({"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, 60.0, 0.0),  # HTTP-date: not understood
    ({"Retry-After": "nan"}, 60.0, 0.0),
    ({"Content-Type": "application/json"}, 60.0, 0.0),
    (None, 60.0, 0.0),
])
def test_retry_after_header(headers, cap, expected):
    assert retry_after_seconds(headers, cap) == expected


def test_retry_after_is_a_floor_on_the_backoff_within_the_cap():
    policy = ReconnectPolicy(PolicySettings(reconnect_delay=0.1, max_reconnect_delay=5.0),
                             jitter=fixed(0.0))
    policy.failed(websocket=False)
    assert policy.next_delay(retry_after=2.0) == 2.0
    assert policy.next_delay(retry_after=0.0) == 0.05
    assert policy.next_delay(retry_after=60.0) == 5.0


@pytest.mark.parametrize(("heartbeat", "interval"), [(30.0, 1.0), (4.0, 1.0), (2.0, 0.5),
                                                       (0.4, 0.1)])
def test_the_watchdog_looks_every_min_of_one_second_and_a_quarter_heartbeat(heartbeat, interval):
    assert watchdog_interval(heartbeat) == interval
    assert ReconnectPolicy(PolicySettings(heartbeat_interval=heartbeat)).watchdog_interval == interval


def test_a_stream_is_stale_only_after_more_than_the_heartbeat_interval_of_silence():
    policy = ReconnectPolicy(PolicySettings(heartbeat_interval=10.0))
    assert [policy.is_stale(s) for s in (0.0, 9.99, 10.0, 10.01, 1e9)] == [
        False, False, False, True, True]


def test_staleness_is_noticed_within_heartbeat_plus_one_watchdog_interval():
    """Watchdog ticks at k * interval; silence starting at any moment s is noticed at the first
    tick where silence > heartbeat, which is at most heartbeat + interval after s."""
    for heartbeat in (0.4, 2.0, 10.0, 30.0):
        policy = ReconnectPolicy(PolicySettings(heartbeat_interval=heartbeat))
        interval = policy.watchdog_interval
        for start in (0.0, 0.013, interval / 2, interval * 0.999):
            noticed = next(k * interval for k in itertools.count(1)
                           if policy.is_stale(k * interval - start))
            assert heartbeat < noticed - start <= heartbeat + interval + 1e-9
