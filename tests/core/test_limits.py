"""How far a server's advertised limits are believed, pure (see empirio/_core/limits.py)."""

from __future__ import annotations

from empirio._core.limits import ADOPT_AFTER, RAMP, RPM_CEILING, LimitsInEffect


def test_limits_nobody_set_take_what_the_server_advertises_and_set_ones_never_do() -> None:
    defaults = LimitsInEffect(50, 2_000_000, "default", "default")
    # Tighter: at once.
    assert defaults.adopt({"rpm": 20}) == LimitsInEffect(20, 2_000_000, "server", "default")
    # Looser: only after ADOPT_AFTER answers in a row, the tightest of them, RAMP-fold at most.
    limits = defaults
    for said in (1200, 900, 1500):
        assert (limits.rpm, limits.rpm_source) == (50, "default")
        limits = limits.adopt({"rpm": said, "tpm": None})
    assert (limits.rpm, limits.tpm) == (500, 20_000_000)
    assert (limits.rpm_source, limits.tpm_source) == ("server", "server")
    for _ in range(ADOPT_AFTER):
        limits = limits.adopt({"rpm": 900, "tpm": None})
    assert (limits.rpm, limits.tpm) == (900, 200_000_000)
    for _ in range(3 * ADOPT_AFTER):  # "unlimited" is reached, a step at a time
        limits = limits.adopt({"rpm": 900, "tpm": None})
    assert (limits.rpm, limits.tpm) == (900, None)
    assert defaults.adopt({}) == defaults
    chosen = LimitsInEffect(60, None, "set", "set")
    assert chosen.adopt({"rpm": 1200, "tpm": 5_000_000}) == chosen
    assert not chosen.listening


def test_a_server_that_lies_once_is_not_believed_for_ever() -> None:
    limits = LimitsInEffect(50, 2_000_000, "default", "default")
    once = limits.adopt({"rpm": None, "tpm": None})  # "unlimited" once: not believed
    assert (once.rpm, once.tpm) == (50, 2_000_000)
    # A huge number is approached a step at a time, and held to the ceiling...
    for _ in range(ADOPT_AFTER):
        limits = limits.adopt({"rpm": 1_000_000})
    assert limits.rpm == 50 * RAMP
    for _ in range(10 * ADOPT_AFTER):
        limits = limits.adopt({"rpm": 1_000_000})
    assert limits.rpm == RPM_CEILING
    # ... and the next answer that says less is taken at once: read on every answer.
    assert limits.adopt({"rpm": 120}).rpm == 120
    # A looser word interrupted by a tighter one starts counting again.
    l2 = LimitsInEffect(120, None, "server", "set")
    l2 = l2.adopt({"rpm": 600}).adopt({"rpm": 600}).adopt({"rpm": 120}).adopt({"rpm": 600})
    assert l2.rpm == 120
    assert l2.adopt({"rpm": 0}).rpm == 120  # nonsense is ignored
