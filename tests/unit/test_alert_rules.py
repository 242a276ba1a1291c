"""The alert rules as pure functions: conditions, episodes, notifications, events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.alerts import rules
from worker.alerts.rules import (
    AUTH_FAILED,
    DATA_STALE,
    FIRING,
    RESOLVED,
    WORKERS_DROP,
    WORKERS_SURGE,
    Episode,
    Signal,
    SubjectFacts,
    Thresholds,
)

T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
ALL = ("webhook", "alertmanager", "pagerduty", "slack")


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def history(*counts: int, start: int = 0) -> tuple[tuple[datetime, int], ...]:
    return tuple((at(start + i), n) for i, n in enumerate(counts))


def facts(current, *counts, sub="site-a", failed=False, failing_since=None, start=0):
    return SubjectFacts(
        "BTC", sub, current, history(*counts, start=start), failed=failed,
        failing_since=failing_since,
    )  # fmt: skip


def signal_of(signals, kind, sub="site-a"):
    [found] = [s for s in signals if s.kind == kind and s.subaccount == sub]
    return found


# --------------------------------------------------------------------------- conditions


@pytest.mark.parametrize(
    ("baseline", "current", "fires"),
    [
        (100, 90, True),  # 10 workers, 10 %
        (100, 91, False),  # 9 %
        (20, 17, True),  # 3 workers, 15 %
        (20, 18, False),  # 2 workers: under ALERT_DROP_MIN
        (1000, 905, False),  # 95 workers but 9.5 %
        (0, 0, False),
        (10, 12, False),
    ],
)
def test_a_drop_needs_both_the_worker_count_and_the_percentage(baseline, current, fires):
    assert rules.drop_condition(baseline, current, 3, 10.0) is fires


def test_the_baseline_is_the_highest_count_of_the_window_latest_first():
    assert rules.peak(history(5, 9, 7, 9, 3)) == (at(3), 9)
    assert rules.peak(()) is None
    window = rules.in_window(history(200, 100, 100, start=-20), at(0), 15)
    assert window == [] and rules.in_window(history(1, 2), at(2), 15) == list(history(1, 2))


def test_a_cliff_fires_against_the_window_peak():
    t = Thresholds()
    [s] = [x for x in rules.evaluate([facts(60, 100, 100)], [], at(2), t) if x.kind == WORKERS_DROP]
    assert (s.condition, s.baseline, s.current, s.baseline_at) == (True, 100, 60, at(1))


def test_a_slow_bleed_is_caught_once_it_adds_up():
    t = Thresholds()
    seen = []
    counts = [100]
    for minute in range(1, 12):
        current = 100 - minute
        s = signal_of(rules.evaluate([facts(current, *counts)], [], at(minute), t), WORKERS_DROP)
        seen.append(s.condition)
        counts.append(current)
    # -1 a minute: 10 below the peak of the window after ten minutes.
    assert seen.index(True) == 9 and not any(seen[:9])


def test_older_peaks_outside_the_window_do_not_count():
    t = Thresholds(window_minutes=5)
    old = facts(80, 100, 80, 80, 80, 80, 80, 80, start=-7)
    assert signal_of(rules.evaluate([old], [], at(0), t), WORKERS_DROP).condition is False


def test_a_failed_subaccount_is_unknown_not_zero():
    t = Thresholds()
    failing = facts(None, 100, 100, failed=True, failing_since=at(2))
    signals = rules.evaluate([failing], [], at(2), t)
    assert signal_of(signals, WORKERS_DROP).condition is None
    assert signal_of(signals, DATA_STALE).condition is False  # failing for 1 min only


def test_stale_after_the_stale_minutes_without_a_success():
    t = Thresholds(stale_minutes=10)
    last_ok = facts(None, 100, failed=True, failing_since=at(1))  # last success at 0
    assert signal_of(rules.evaluate([last_ok], [], at(9), t), DATA_STALE).condition is False
    stale = signal_of(rules.evaluate([last_ok], [], at(10), t), DATA_STALE)
    assert stale.condition is True and stale.info["last_success_at"] == "2026-12-03T10:00:00Z"
    # Without any success in the lookback, the failure streak is the measure.
    never = facts(None, failed=True, failing_since=at(3))
    assert signal_of(rules.evaluate([never], [], at(12), t), DATA_STALE).condition is False
    assert signal_of(rules.evaluate([never], [], at(13), t), DATA_STALE).condition is True


def test_a_blind_fleet_pages_once_not_once_per_subaccount():
    t = Thresholds(stale_minutes=2)
    subs = [facts(None, 50, sub=n, failed=True, failing_since=at(1)) for n in ("a", "b")]
    fleet = SubjectFacts(
        "BTC", None, None, (), failed=True, failing_since=at(1), last_success_at=at(0)
    )
    signals = rules.evaluate([*subs, fleet], [], at(3), t)
    assert signal_of(signals, DATA_STALE, None).condition is True
    assert [signal_of(signals, DATA_STALE, n).condition for n in ("a", "b")] == [None, None]


def test_auth_failed_while_the_key_is_refused():
    t = Thresholds()
    assert rules.evaluate([], [], at(0), t, auth_failed=["BTC"]) == [
        Signal(AUTH_FAILED, "BTC", None, True)
    ]
    ok = rules.evaluate([facts(10, 10)], [], at(1), t)
    assert signal_of(ok, AUTH_FAILED, None).condition is False


def test_surge_only_when_enabled():
    t = Thresholds()
    assert not [
        s for s in rules.evaluate([facts(150, 100)], [], at(1), t) if s.kind == WORKERS_SURGE
    ]
    on = Thresholds(surge_enabled=True)
    assert signal_of(rules.evaluate([facts(150, 100)], [], at(1), on), WORKERS_SURGE).condition


# --------------------------------------------------------------------------- episodes


def run(episodes, signal_list, minute):
    transitions = rules.advance(episodes, signal_list, at(minute))
    return [t.episode for t in transitions], [t.change for t in transitions]


def drop(condition, current=60, baseline=100):
    return Signal(WORKERS_DROP, "BTC", "site-a", condition, baseline, current, at(1))


def test_an_episode_opens_fires_and_resolves_after_two_good_ticks():
    live, changes = run([], [drop(True)], 2)
    assert changes == ["opened"] and live[0].status == FIRING and live[0].started_at == at(2)
    assert live[0].details["baseline_at"] == "2026-12-03T10:01:00Z"
    assert live[0].details["delta"] == -40 and live[0].details["percent"] == -40.0

    live, changes = run(live, [drop(True, 55)], 3)
    assert changes == ["firing"] and live[0].current == 55

    live, changes = run(live, [drop(False, 100)], 4)
    assert changes == ["firing"] and live[0].details["clear_ticks"] == 1
    live, changes = run(live, [drop(True, 60)], 5)  # back down: the count starts over
    assert live[0].details["clear_ticks"] == 0
    live, _ = run(live, [drop(False, 100)], 6)
    live, changes = run(live, [drop(False, 100)], 7)
    assert changes == ["resolved"] and live[0].status == RESOLVED
    assert live[0].resolved_at == at(7) and live[0].started_at == at(2)


def test_unknown_keeps_an_episode_as_it_is():
    live, _ = run([], [drop(True)], 2)
    before = live[0]
    live, changes = run(live, [Signal(WORKERS_DROP, "BTC", "site-a", None)], 3)
    assert changes == ["firing"] and live[0].current == before.current
    assert live[0].details["clear_ticks"] == 0


def test_advance_leaves_its_input_alone():
    live, _ = run([], [drop(True)], 2)
    snapshot = live[0].copy()
    run(live, [drop(False, 100)], 3)
    assert live[0] == snapshot


def test_a_lasting_outage_does_not_resolve_when_the_window_slides_on():
    t = Thresholds(window_minutes=3)
    live, _ = run(
        [], [signal_of(rules.evaluate([facts(60, 100, 100)], [], at(2), t), WORKERS_DROP)], 2
    )
    # Ten minutes later the window holds only 60s; the episode is judged against its 100.
    later = facts(60, 60, 60, 60, start=7)
    s = signal_of(rules.evaluate([later], live, at(10), t), WORKERS_DROP)
    assert s.condition is True and s.baseline == 100


def test_the_key_resolves_at_the_first_good_tick():
    live, _ = run([], [Signal(AUTH_FAILED, "BTC", None, True)], 0)
    live, changes = run(live, [Signal(AUTH_FAILED, "BTC", None, False)], 1)
    assert changes == ["resolved"]


def test_a_subject_gone_from_the_listing_resolves_unless_the_tick_was_blind():
    live, _ = run([], [drop(True)], 2)
    others = [facts(10, 10, sub="site-b")]
    gone = rules.evaluate(others, live, at(3), Thresholds())
    assert signal_of(gone, WORKERS_DROP).condition is False
    blind = rules.evaluate(others, live, at(3), Thresholds(), blind=True)
    assert signal_of(blind, WORKERS_DROP).condition is None


def test_workers_down_are_capped_at_100_with_a_count_of_the_rest():
    before = [f"rig-{i:04d}" for i in range(250)]
    now = before[:100]
    down, more = rules.workers_down(before, now)
    assert down == before[100:200] and more == 50
    assert rules.workers_down(["a", "b"], ["a"]) == (["b"], 0)
    assert rules.workers_down(["a"], ["a", "c"]) == ([], 0)


def test_failure_streaks_start_once_and_end_with_a_success():
    failed = facts(None, failed=True)
    state = rules.next_failing_since({}, [failed], at(1))
    assert state == {"site-a": "2026-12-03T10:01:00Z"}
    assert rules.next_failing_since(state, [failed], at(2)) == state
    assert rules.next_failing_since(state, [facts(5, 5)], at(3)) == {}


# --------------------------------------------------------------------------- dedup keys


def test_the_dedup_key_is_deterministic_per_episode():
    key = rules.dedup_key(WORKERS_DROP, "BTC", "site-00", at(2))
    assert key == f"luxor-etl:workers_drop:BTC:site-00:{int(at(2).timestamp())}"
    assert rules.dedup_key(WORKERS_DROP, "BTC", None, at(2)).endswith(":fleet:1796292120")
    assert rules.dedup_key(WORKERS_DROP, "BTC", "fleet", at(2)) != rules.dedup_key(
        WORKERS_DROP, "BTC", None, at(2)
    )
    long = rules.dedup_key(WORKERS_DROP, "BTC", "x" * 500, at(2))
    assert len(long) < 255 and long != rules.dedup_key(WORKERS_DROP, "BTC", "x" * 499, at(2))
    assert ":" not in rules.dedup_key(WORKERS_DROP, "BTC", "a:b", at(2)).split(":")[3]


# --------------------------------------------------------------------------- notifications


def plan(transitions, lingering=(), minute=0, channels=ALL, repeat=60):
    return rules.plan_notifications(
        transitions, list(lingering), at(minute), channels=channels, repeat_minutes=repeat,
        window_minutes=15,
    )  # fmt: skip


def by_channel(notifications):
    result = {}
    for n in notifications:
        result.setdefault(n.channel, []).append(n)
    return result


def test_an_opened_episode_goes_to_every_channel_once():
    opened = rules.advance([], [drop(True)], at(2))
    sent, episodes = plan(opened, minute=2)
    channels = by_channel(sent)
    assert sorted(channels) == sorted(ALL)
    assert [n.action for n in sent if n.channel in ("webhook", "pagerduty")] == ["trigger"] * 2
    assert all(len(v) == 1 for v in channels.values())
    assert episodes[0].notifications["webhook"]["first_at"] == "2026-12-03T10:02:00Z"

    again = rules.advance(episodes, [drop(True)], at(3))
    sent, _ = plan(again, minute=3)
    assert [n.channel for n in sent] == ["alertmanager"]  # only Alertmanager hears it each tick


def test_a_still_firing_page_repeats_only_after_the_repeat_minutes():
    live = [t.episode for t in rules.advance([], [drop(True)], at(0))]
    _, live = plan(rules.advance(live, [drop(True)], at(0)), minute=0, repeat=30)
    for minute in (1, 29):
        sent, _ = plan(rules.advance(live, [drop(True)], at(minute)), minute=minute, repeat=30)
        assert [n.channel for n in sent] == ["alertmanager"]
    sent, live = plan(rules.advance(live, [drop(True)], at(30)), minute=30, repeat=30)
    assert sorted(n.channel for n in sent) == sorted(ALL)
    assert live[0].notifications["pagerduty"]["count"] == 2


def test_a_resolve_goes_where_the_trigger_went_with_the_same_dedup_key():
    _, live = plan(rules.advance([], [drop(True)], at(0)), channels=("webhook",))
    live, _ = run(live, [drop(False, 100)], 1)
    transitions = rules.advance(live, [drop(False, 100)], at(2))
    sent, live = plan(transitions, minute=2, channels=("webhook", "pagerduty"))
    [resolve] = sent  # PagerDuty never heard the trigger, so it gets no resolve
    assert resolve.channel == "webhook" and resolve.action == "resolve"
    assert resolve.events[0].status == RESOLVED
    assert resolve.events[0].dedup_key == live[0].dedup_key
    assert resolve.events[0].started_at == "2026-12-03T10:00:00Z"


def test_alertmanager_hears_a_resolve_on_three_ticks():
    _, live = plan(rules.advance([], [drop(True)], at(0)))
    live, _ = run(live, [drop(False, 100)], 1)
    sent, live = plan(rules.advance(live, [drop(False, 100)], at(2)), minute=2)
    assert "alertmanager" in by_channel(sent)
    counts = []
    for minute in (3, 4, 5):
        sent, changed = plan([], lingering=live, minute=minute)
        counts.append(len(by_channel(sent).get("alertmanager", [])))
        live = changed or live
    assert counts == [1, 1, 0]
    assert live[0].notifications["alertmanager"]["resolves"] == 3


def test_a_new_episode_of_the_same_subject_silences_the_old_resolves():
    _, old = plan(rules.advance([], [drop(True)], at(0)))
    old, _ = run(old, [drop(False, 100)], 1)
    _, old = plan(rules.advance(old, [drop(False, 100)], at(2)), minute=2)
    new = rules.advance(old, [drop(True)], at(3))
    sent, _ = plan(new, lingering=old, minute=3)
    [am] = by_channel(sent)["alertmanager"]
    assert [e.status for e in am.events] == [FIRING]


def test_slack_batches_a_ticks_events_into_one_message():
    signals = [Signal(WORKERS_DROP, "BTC", f"site-{i}", True, 100, 50, at(0)) for i in range(3)]
    sent, _ = plan(rules.advance([], signals, at(1)), minute=1)
    [slack] = by_channel(sent)["slack"]
    assert len(slack.events) == 3 and slack.action == "batch"
    assert len(by_channel(sent)["webhook"]) == 3


def test_notification_keys_are_deterministic():
    first, _ = plan(rules.advance([], [drop(True)], at(2)), minute=2)
    second, _ = plan(rules.advance([], [drop(True)], at(2)), minute=2)
    assert [n.key for n in first] == [n.key for n in second]
    assert len({n.key for n in first}) == len(first)


# --------------------------------------------------------------------------- events


def test_the_event_carries_every_webhook_field():
    [t] = rules.advance([], [drop(True)], at(2))
    t.episode.details["workers_down"] = ["rig-1", "rig-2"]
    t.episode.details["workers_down_more"] = 38
    event = rules.event_for(t.episode, at(2), window_minutes=15, runbook_url="https://rb")
    doc = event.to_json()
    assert list(doc) == [
        "version", "status", "kind", "severity", "currency", "subaccount", "baseline",
        "current", "delta", "percent", "started_at", "resolved_at", "observed_at",
        "workers_down", "workers_down_more", "dedup_key", "summary", "dashboard_url",
        "runbook_url",
    ]  # fmt: skip
    assert doc["delta"] == -40 and doc["percent"] == -40.0 and doc["workers_down_more"] == 38
    assert "40 workers down" in doc["summary"] and "rig-1, rig-2 (+38 more)" in doc["summary"]
    assert rules.AlertEvent.from_json(doc) == event


def test_summaries_say_what_happened():
    fleet = Episode(WORKERS_DROP, "BTC", None, FIRING, at(0), baseline=300, current=250,
                    details={"percent": -16.7})  # fmt: skip
    assert rules.summary(fleet, FIRING, 15).startswith("BTC fleet: 50 workers down")
    stale = Episode(DATA_STALE, "BTC", "b", FIRING, at(0),
                    details={"last_success_at": "2026-12-03T09:48:00Z"})  # fmt: skip
    assert "no successful fetch" in rules.summary(stale, FIRING, 15)
    assert "refuses the API key" in rules.summary(
        Episode(AUTH_FAILED, "BTC", None, FIRING, at(0)), FIRING, 15
    )
    assert rules.summary(fleet, RESOLVED, 15).startswith("Resolved: BTC fleet")


def test_the_test_event_is_marked():
    event = rules.test_event("BTC", at(0), source="host-1")
    assert event.kind == "test" and event.summary.startswith("[TEST]")
    assert event.dedup_key.startswith("luxor-etl:test:")


def test_the_fleet_compares_only_ticks_where_every_subaccount_answered():
    from tasks.alerts import build_facts
    from worker.snapshot import FleetSnapshot, SubaccountFailure, SubaccountSnapshot

    def snap(name: str, active: int) -> SubaccountSnapshot:
        return SubaccountSnapshot("BTC", name, at(3), active, 0, 0.0, ())

    rows = [
        ("a", at(0), 50),
        ("b", at(0), 50),
        ("a", at(1), 50),
        ("a", at(2), 49),
        ("b", at(2), 50),
    ]
    complete = FleetSnapshot("BTC", at(3), ("a", "b"), (snap("a", 40), snap("b", 50)), ())
    facts_now = {f.subaccount: f for f in build_facts("BTC", complete, rows, {})}
    assert facts_now[None].history == ((at(0), 100), (at(2), 99))  # tick 1 lacks b
    assert facts_now[None].current == 90 and facts_now["a"].current == 40

    partial = FleetSnapshot(
        "BTC", at(3), ("a", "b"), (snap("a", 40),), (SubaccountFailure("BTC", "b", "503", "x"),)
    )
    facts_now = {f.subaccount: f for f in build_facts("BTC", partial, rows, {})}
    assert facts_now[None].current is None and facts_now["b"].current is None
    assert facts_now["b"].failed and facts_now["b"].last_success == at(2)
    assert facts_now[None].last_success == at(2) and not facts_now[None].failed


def test_names_are_compared_as_postgresql_stores_them():
    from tasks.alerts import stored_names
    from worker.snapshot import FleetSnapshot, SubaccountSnapshot, WorkerSample

    worker = WorkerSample("1", "rig\x00a", "ACTIVE", 1.0, None, None, None, None, None)
    snap = SubaccountSnapshot("BTC", "site\x00b", at(0), 1, 0, 1.0, (worker,))
    fleet = FleetSnapshot("BTC", at(0), ("site\x00b",), (snap,), ())
    stored = stored_names(fleet)
    assert stored.subaccounts == ("site\ufffdb",)
    assert stored.snapshots[0].subaccount == "site\ufffdb"
    assert stored.snapshots[0].workers[0].name == "rig\ufffda"
    plain = FleetSnapshot("BTC", at(0), ("a",), (), ())
    assert stored_names(plain) is plain and stored_names(None) is None
