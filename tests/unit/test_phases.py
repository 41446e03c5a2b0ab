"""The phase machine, without servers: allowed moves, rollback targets, checks, decisions."""

from __future__ import annotations

import pytest

from cutover.errors import ConfigurationError
from cutover.phases import (
    ORDER,
    Check,
    Mode,
    Outcome,
    Phase,
    Side,
    advance,
    decide,
    drain_refusal,
    mode,
    rollback,
    transition,
    writes,
)


def test_the_walk_advances_one_phase_at_a_time_and_stops_at_complete() -> None:
    walked = [Phase.OFF]
    while walked[-1] is not Phase.COMPLETE:
        walked.append(advance(walked[-1]).to)
    assert tuple(walked) == ORDER
    with pytest.raises(ConfigurationError, match="no phase after"):
        advance(Phase.COMPLETE)


def test_writes_go_to_the_source_then_both_target_first_then_the_target() -> None:
    assert writes(Phase.OFF) == (Side.SOURCE,)
    assert writes(Phase.SHADOW) == (Side.TARGET, Side.SOURCE)
    assert writes(Phase.LIVE) == (Side.TARGET, Side.SOURCE)
    assert writes(Phase.RAMPDOWN) == (Side.TARGET,)
    assert writes(Phase.COMPLETE) == (Side.TARGET,)


def test_workers_execute_once_per_job_in_every_phase() -> None:
    # Where both sides hold copies (shadow, live, rampdown), at most one side runs unfenced,
    # and the target never runs a job in shadow.
    for phase in ORDER:
        modes = {mode(phase, side) for side in Side}
        both_copies = len(writes(phase)) == 2 or phase is Phase.RAMPDOWN
        if both_copies:
            assert {mode(phase, Side.SOURCE), mode(phase, Side.TARGET)} != {Mode.EXECUTE}
        assert modes & {Mode.EXECUTE, Mode.FENCED}, phase
    assert mode(Phase.SHADOW, Side.TARGET) is Mode.DRY
    assert mode(Phase.OFF, Side.TARGET) is Mode.IDLE
    assert mode(Phase.COMPLETE, Side.SOURCE) is Mode.IDLE
    assert mode(Phase.LIVE, Side.SOURCE) is mode(Phase.LIVE, Side.TARGET) is Mode.FENCED


def test_switches_of_writes_are_marked() -> None:
    assert advance(Phase.OFF).switches_writes
    assert not advance(Phase.SHADOW).switches_writes
    assert advance(Phase.LIVE).switches_writes
    assert not advance(Phase.RAMPDOWN).switches_writes
    assert rollback(Phase.RAMPDOWN).switches_writes


def test_rollback_goes_one_back_or_to_an_earlier_phase_and_moves_jobs_back_when_needed() -> None:
    assert rollback(Phase.LIVE).to is Phase.SHADOW
    assert not rollback(Phase.LIVE).moves_back
    assert rollback(Phase.RAMPDOWN).moves_back          # target-only jobs exist
    assert rollback(Phase.SHADOW, Phase.OFF).moves_back  # back to source-only
    assert rollback(Phase.COMPLETE, Phase.OFF).past_point_of_no_return
    with pytest.raises(ConfigurationError, match="nothing to roll back"):
        rollback(Phase.OFF)
    with pytest.raises(ConfigurationError, match="not an earlier phase"):
        rollback(Phase.SHADOW, Phase.LIVE)


def test_set_is_one_step_forward_or_a_rollback_never_a_jump() -> None:
    assert transition(Phase.OFF, Phase.SHADOW) == advance(Phase.OFF)
    assert transition(Phase.LIVE, Phase.OFF) == rollback(Phase.LIVE, Phase.OFF)
    with pytest.raises(ConfigurationError, match="one phase at a time"):
        transition(Phase.OFF, Phase.LIVE)
    with pytest.raises(ConfigurationError, match="already"):
        transition(Phase.LIVE, Phase.LIVE)


def test_complete_requires_a_drained_source_and_a_clean_verify() -> None:
    checks = advance(Phase.RAMPDOWN).checks
    assert Check.SOURCE_DRAINED in checks and Check.VERIFY_CLEAN in checks
    assert Check.SHADOW_CONSISTENCY in advance(Phase.SHADOW).checks


def test_a_check_nobody_evaluated_refuses_and_each_refusal_is_named() -> None:
    move = advance(Phase.SHADOW)
    outcomes = {c: Outcome(True) for c in move.checks}
    assert decide(move, outcomes).allowed
    outcomes.pop(Check.WORKERS_ALIVE)
    outcomes[Check.SHADOW_CONSISTENCY] = Outcome(False, "97.0% matched, 99.0% needed")
    decision = decide(move, outcomes)
    assert not decision.allowed
    assert dict(decision.refusals) == {Check.WORKERS_ALIVE: "not evaluated",
                                       Check.SHADOW_CONSISTENCY: "97.0% matched, 99.0% needed"}


def test_force_overrides_only_with_a_reason_and_says_it_was_forced() -> None:
    move = rollback(Phase.COMPLETE)
    passed = {c: Outcome(True) for c in move.checks}
    decision = decide(move, passed)
    assert not decision.allowed
    assert [c for c, _ in decision.refusals] == [Check.POINT_OF_NO_RETURN]
    with pytest.raises(ConfigurationError, match="--why"):
        decide(move, passed, force=True)
    forced = decide(move, passed, force=True, why="payments on RQ again after incident 42")
    assert forced.allowed and forced.forced
    # Forcing a move that nothing refused is not recorded as forced.
    assert not decide(advance(Phase.OFF), {c: Outcome(True) for c in advance(Phase.OFF).checks},
                      force=True, why="x").forced


def test_phase_names_parse_or_say_which_exist() -> None:
    assert Phase.parse(" Live ") is Phase.LIVE
    with pytest.raises(ConfigurationError, match="off, shadow, live, rampdown, complete"):
        Phase.parse("liv")


def test_mode_takes_a_side_by_its_name_and_refuses_an_unknown_one() -> None:
    # "source" as a plain string once got the target's rules: DRY in shadow (removed unrun)
    assert mode(Phase.SHADOW, "source") is Mode.EXECUTE  # type: ignore[arg-type]
    assert mode(Phase.SHADOW, "target") is Mode.DRY  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sideways"):
        mode(Phase.SHADOW, "sideways")  # type: ignore[arg-type]


def test_drain_refusal_follows_what_the_receiving_sides_workers_do() -> None:
    def refused(phase: Phase, epoch: int, into: Side) -> bool:
        return drain_refusal(phase, epoch, into, "redis://s", "postgresql://t") is not None

    # No staged cut-over ever started: a plain drain either way.
    assert not refused(Phase.OFF, 0, Side.TARGET) and not refused(Phase.OFF, 0, Side.SOURCE)
    # Into the target: refused where it dry-runs (shadow) or idles (off after a rollback).
    assert [p for p in ORDER if refused(p, 5, Side.TARGET)] == [Phase.OFF, Phase.SHADOW]
    # Into the source: refused only where it idles (complete).
    assert [p for p in ORDER if refused(p, 5, Side.SOURCE)] == [Phase.COMPLETE]
    why = drain_refusal(Phase.OFF, 5, Side.TARGET, "redis://s", "postgresql://t") or ""
    assert "cutover drain --source postgresql://t --target redis://s" in why
    assert "cutover phase advance --from shadow" in (
        drain_refusal(Phase.SHADOW, 2, Side.TARGET, "redis://s", "postgresql://t") or "")
