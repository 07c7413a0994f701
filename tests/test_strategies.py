import numpy as np
import pytest

from strategies import AggregatedUpdate, FedAdam, FedAvg, FedProx, FedYogi, make_strategy


def arrays(**arrays: list[float]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}


def aggregate(deltas: list[dict[str, np.ndarray]], weights: list[float]) -> AggregatedUpdate:
    total = {k: sum(w * d[k] for d, w in zip(deltas, weights, strict=True)) for k in deltas[0]}
    return AggregatedUpdate(total, sum(weights), len(deltas))


def test_fedavg_matches_the_weighted_mean_by_hand() -> None:
    # (10 * [1, 2] + 30 * [5, -2]) / 40 = [4, -1]
    update = aggregate([arrays(a=[1, 2]), arrays(a=[5, -2])], [10, 30])
    out = FedAvg().apply(arrays(a=[0.5, 0.5]), update)
    np.testing.assert_allclose(out["a"], [4.5, -0.5])


def test_fedavg_of_identical_updates_returns_that_update() -> None:
    delta = arrays(a=[0.25, -1.5, 3.0], b=[[1.0]])
    update = aggregate([delta] * 4, [3, 7, 1, 9])
    out = FedAvg().apply(arrays(a=[0, 0, 0], b=[[0]]), update)
    for k in delta:
        np.testing.assert_allclose(out[k], delta[k], rtol=1e-6)


def test_fedprox_aggregates_like_fedavg_and_sends_mu() -> None:
    update = aggregate([arrays(a=[2.0])], [5])
    assert FedProx(proximal_mu=0.3).apply(arrays(a=[1.0]), update)["a"][0] == pytest.approx(3.0)
    assert FedProx(proximal_mu=0.3).train_config(1) == {"train.proximal_mu": 0.3}


def test_fedadam_two_steps_by_hand() -> None:
    s = FedAdam(eta=0.1, beta1=0.9, beta2=0.99, tau=0.01)
    x = s.apply(arrays(a=[1.0]), aggregate([arrays(a=[2.0])], [1]))
    # m = 0.2, v = 0.04, step = 0.1 * 0.2 / (0.2 + 0.01)
    assert x["a"][0] == pytest.approx(1.0 + 0.1 * 0.2 / 0.21, rel=1e-6)
    x = s.apply(x, aggregate([arrays(a=[-1.0])], [1]))
    m, v = 0.9 * 0.2 + 0.1 * -1.0, 0.99 * 0.04 + 0.01 * 1.0
    assert x["a"][0] == pytest.approx(
        1.0 + 0.1 * 0.2 / 0.21 + 0.1 * m / (np.sqrt(v) + 0.01), rel=1e-5
    )


def test_fedyogi_two_steps_by_hand() -> None:
    s = FedYogi(eta=0.1, beta1=0.9, beta2=0.99, tau=0.01)
    x = s.apply(arrays(a=[0.0]), aggregate([arrays(a=[2.0])], [1]))
    # v = 0 - 0.01 * 4 * sign(0 - 4) = 0.04
    assert x["a"][0] == pytest.approx(0.1 * 0.2 / 0.21, rel=1e-6)
    x = s.apply(x, aggregate([arrays(a=[0.1])], [1]))
    m = 0.9 * 0.2 + 0.1 * 0.1
    v = 0.04 - 0.01 * 0.01 * np.sign(0.04 - 0.01)
    assert x["a"][0] == pytest.approx(0.1 * 0.2 / 0.21 + 0.1 * m / (np.sqrt(v) + 0.01), rel=1e-5)


def test_strategies_refuse_mismatched_aggregates_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="do not match"):
        FedAvg().apply(arrays(a=[1.0]), aggregate([arrays(b=[1.0])], [1]))
    with pytest.raises(ValueError, match="total_weight"):
        AggregatedUpdate(arrays(a=[1.0]), 0.0, 1)
    with pytest.raises(ValueError, match="unknown strategy 'fedsgdx'"):
        make_strategy("fedsgdx")
