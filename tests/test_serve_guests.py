"""The guest budget: never more guests than configured, a waiting follow-up goes first, and
only as many campaigns as it needs are asked to give theirs back."""

import threading
import time

from fuzz.serve.guests import GuestPool


def test_a_follow_up_preempts_one_campaign_not_all():
    pool, never = GuestPool(2), threading.Event()
    with pool.hold(1, False, never) as first, pool.hold(1, False, never) as second:
        assert pool.in_use() == 2 and not first.should_yield()
        got = []
        waiter = threading.Thread(target=lambda: got.append(_hold_briefly(pool, never)))
        waiter.start()
        deadline = time.monotonic() + 5
        while not (first.should_yield() or second.should_yield()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [first.yielding, second.yielding].count(True) == 1       # one guest needed, one asked
    waiter.join(5)
    assert got == [True] and pool.in_use() == 0


def test_campaigns_wait_while_a_follow_up_waits_and_cancel_releases_nothing():
    pool, cancelled = GuestPool(1), threading.Event()
    with pool.hold(1, False, cancelled):
        cancelled.set()
        with pool.hold(1, True, cancelled) as lease:
            assert not lease.held
    assert pool.in_use() == 0


def _hold_briefly(pool, never) -> bool:
    with pool.hold(1, True, never) as lease:
        return lease.held
