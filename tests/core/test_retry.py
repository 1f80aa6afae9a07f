from spindel_jupyter.core.retry import jittered


def test_reconnection_delays_are_spread_out_between_half_and_all_of_the_backoff() -> None:
    delays = [jittered(2.0) for _ in range(200)]
    assert all(1.0 <= d <= 2.0 for d in delays)
    assert len({round(d, 3) for d in delays}) > 100  # peers that lost the hub together come back apart
