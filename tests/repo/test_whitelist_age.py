"""The whitelist age check shared by service, replicas and the commands."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from rcds.format.whitelist import Whitelist
from rcds.repo.whitelist_age import WhitelistState, assess, assess_bytes, assess_tree

NOW = dt.datetime(2030, 5, 10, 12, 30, tzinfo=dt.UTC)


def wl(days_ago: float, validity: float = 30) -> Whitelist:
    created = NOW - dt.timedelta(days=days_ago)
    return Whitelist(created, created + dt.timedelta(days=validity), "a.example.org", ("AB:CD",))


def test_states_by_the_third_of_validity_left() -> None:
    fresh = assess("a.example.org", wl(0), NOW)
    assert (fresh.state, fresh.days_left, fresh.needs_resign) == (WhitelistState.OK, 30, False)
    assert assess("a.example.org", wl(19.9), NOW).state is WhitelistState.OK  # 10.1 days left
    due = assess("a.example.org", wl(20.5), NOW)  # 9.5 days left
    assert (due.state, due.days_left, due.needs_resign, due.overdue) == (WhitelistState.RENEW, 9, True, False)
    assert "expires in 9 days" in due.message()
    assert assess("a.example.org", wl(21.5), NOW).overdue  # due for more than a day
    # stock's rule: expired from the hour of E on
    gone = assess("a.example.org", wl(29.99), NOW)
    assert gone.state is WhitelistState.EXPIRED and gone.days_left == 0 and "expired at" in gone.message()
    short = assess("a.example.org", wl(0.5, validity=3), NOW)  # a 3-day whitelist: a third is 1 day
    assert short.state is WhitelistState.OK


def test_unreadable(tmp_path: Path) -> None:
    missing = assess_tree("a.example.org", tmp_path, NOW)
    assert missing.state is WhitelistState.UNREADABLE and "cannot read" in (missing.error or "")
    bad = assess_bytes("a.example.org", b"garbage\n", NOW)
    assert bad.state is WhitelistState.UNREADABLE and bad.needs_resign and bad.overdue
    assert bad.as_json()["expires"] is None
