import numpy as np

from dopax.inference.svi import still_falling


def test_settled_noisy_loss_is_not_falling() -> None:
    rng = np.random.default_rng(0)
    false_alarms = sum(still_falling(100.0 + 10.0 * rng.normal(size=3000)) for _ in range(200))
    # A flat loss with 10% noise is flagged in few of 200 runs (2.5 sd one-sided).
    assert false_alarms <= 6


def test_decaying_loss_is_falling() -> None:
    steps = np.arange(2000)
    rng = np.random.default_rng(1)
    losses = 100.0 + 500.0 * np.exp(-steps / 1500.0) + rng.normal(size=steps.size)
    assert still_falling(losses)


def test_converged_exponential_is_not_falling() -> None:
    steps = np.arange(5000)
    rng = np.random.default_rng(2)
    losses = 100.0 + 500.0 * np.exp(-steps / 100.0) + rng.normal(size=steps.size)
    assert not still_falling(losses)


def test_short_noisy_fit_far_from_optimum_is_falling() -> None:
    losses = np.array(
        [
            708,
            902,
            565,
            1322,
            811,
            640,
            857,
            745,
            629,
            597,
            603,
            505,
            554,
            537,
            656,
            461,
            771,
            503,
            490,
            509,
        ],
        float,
    )
    assert still_falling(losses)
