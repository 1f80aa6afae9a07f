from spindel_jupyter.core.retry import Backoff, jittered


def test_reconnection_delays_are_spread_out_between_half_and_all_of_the_backoff() -> None:
    delays = [jittered(2.0) for _ in range(200)]
    assert all(1.0 <= d <= 2.0 for d in delays)
    assert len({round(d, 3) for d in delays}) > 100  # peers that lost the hub together come back apart


def test_a_backoff_doubles_up_to_its_most_and_starts_over_once_reset() -> None:
    backoff = Backoff(0.2, 1.0)
    delays = [backoff.next() for _ in range(6)]
    bounds = [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert all(bound / 2 <= delay <= bound for delay, bound in zip(delays, bounds, strict=True)), delays
    backoff.reset()
    assert 0.1 <= backoff.next() <= 0.2
