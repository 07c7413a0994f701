"""The canary audit (issue 15, item 5): the Clopper-Pearson epsilon lower bound on synthetic
scores, the audit of a real local round with and without DP, and ``fedmarket audit privacy``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_invoke import invoke
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

import fedmarket.privacy.audit as audit
from fedmarket.data import Dataset, load_digits
from fedmarket.exceptions import InvalidInput
from fedmarket.models import build_model, get_weights
from fedmarket.privacy import DpConfig, TrainConfig
from fedmarket.privacy.audit_bound import (
    clopper_pearson_upper,
    epsilon_at_threshold,
    epsilon_from_rates,
    epsilon_lower_bound,
)

DELTA = 1e-5


def separated_bound(trials: int, confidence: float) -> float:
    """Closed form for perfectly separated scores: the evaluation half has n = trials - trials
    // 2 a side and no errors, so each rate's bound is u = 1 - (alpha / 2) ** (1 / n), and the
    bound log((1 - delta - u) / u), or 0 where that is negative (n = 5 at 95 %: u = 0.52)."""
    n = trials - trials // 2
    upper = 1 - ((1 - confidence) / 2) ** (1 / n)
    return max(0.0, math.log((1 - DELTA - upper) / upper))


# -- the bound on synthetic scores --------------------------------------------------------------


@pytest.mark.parametrize("trials", [10, 11, 100, 1000])
def test_separated_scores_give_the_closed_form_bound(trials: int) -> None:
    scores = {"s": (np.zeros(trials), np.ones(trials))}

    bound = epsilon_lower_bound(scores, delta=DELTA, confidence=0.95)

    assert bound.epsilon_lower_bound == pytest.approx(separated_bound(trials, 0.95), rel=1e-9)
    assert 0 < bound.threshold < 1
    assert bound.evaluation_trials == (trials - trials // 2,) * 2


def test_the_separated_bound_grows_with_trials_and_falls_with_confidence() -> None:
    def bound(trials: int, confidence: float) -> float:
        scores = {"s": (np.zeros(trials), np.ones(trials))}
        return epsilon_lower_bound(scores, delta=DELTA, confidence=confidence).epsilon_lower_bound

    assert bound(10, 0.95) == 0 < bound(20, 0.95) < bound(100, 0.95) < bound(1000, 0.95)
    assert bound(100, 0.99) < bound(100, 0.95) < bound(100, 0.5)


def test_identical_score_distributions_give_zero() -> None:
    same = np.random.default_rng(0).normal(size=400)
    fresh = np.random.default_rng(1).normal(size=400)

    for negatives, positives in ((same, same), (same, fresh)):
        scores = {"s": (negatives, positives)}
        assert epsilon_lower_bound(scores, delta=DELTA, confidence=0.95).epsilon_lower_bound == 0


def test_the_split_picks_the_statistic_that_separates() -> None:
    noise = np.random.default_rng(0).normal(size=(2, 50))
    scores = {"blind": (noise[0], noise[1]), "sharp": (np.zeros(50), np.ones(50))}

    bound = epsilon_lower_bound(scores, delta=DELTA, confidence=0.95)

    assert bound.statistic == "sharp"
    assert bound.epsilon_lower_bound == pytest.approx(separated_bound(50, 0.95))


@pytest.mark.parametrize(("failures", "trials"), [(0, 1), (0, 20), (3, 20), (19, 20), (7, 500)])
def test_clopper_pearson_matches_scipys_exact_interval(failures: int, trials: int) -> None:
    # A one-sided bound at 95 % is the upper end of the two-sided 90 % exact interval.
    exact = binomtest(failures, trials).proportion_ci(confidence_level=0.90, method="exact").high

    assert clopper_pearson_upper(failures, trials, confidence=0.95) == pytest.approx(exact)
    assert clopper_pearson_upper(trials, trials, confidence=0.95) == 1.0


def test_rates_give_the_dp_inequalities_bound() -> None:
    assert epsilon_from_rates(0.5, 0.5, delta=DELTA) == 0.0
    assert epsilon_from_rates(0.1, 0.2, delta=DELTA) == pytest.approx(math.log((0.8 - DELTA) / 0.1))
    assert epsilon_from_rates(0.0, 0.3, delta=DELTA) == math.inf  # raw rates only
    assert epsilon_from_rates(1.0, 0.0, delta=DELTA) == 0.0  # a test that always says "member"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: epsilon_lower_bound({"s": ([0.0], [1.0])}, delta=DELTA, confidence=0.9),
            "2 trials",
        ),
        (lambda: epsilon_lower_bound({}, delta=DELTA, confidence=0.9), "no statistics"),
        (
            lambda: epsilon_lower_bound(
                {"a": ([0.0] * 4, [1.0] * 4), "b": ([0.0] * 5, [1.0] * 5)},
                delta=DELTA,
                confidence=0.9,
            ),
            "same trials",
        ),
        (
            lambda: epsilon_at_threshold([0.0, math.nan], [1.0], 0.5, delta=DELTA, confidence=0.9),
            "finite",
        ),
        (
            lambda: epsilon_at_threshold([0.0], [1.0], 0.5, delta=DELTA, confidence=1.0),
            "confidence",
        ),
        (lambda: epsilon_at_threshold([0.0], [1.0], 0.5, delta=0.0, confidence=0.9), "delta"),
        (lambda: clopper_pearson_upper(3, 2, confidence=0.9), "failures <= trials"),
    ],
)
def test_bad_bound_input_is_refused_by_name(call: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        call()  # type: ignore[operator]


scores_a_side = st.lists(st.integers(-5, 5), min_size=2, max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    negatives=scores_a_side,
    positives=scores_a_side,
    threshold=st.floats(-6, 6),
    low=st.floats(0.05, 0.98),
    high=st.floats(0.05, 0.98),
)
def test_the_bound_is_nonnegative_monotone_in_confidence_and_below_the_raw_rates(
    negatives: list[int], positives: list[int], threshold: float, low: float, high: float
) -> None:
    low, high = min(low, high), max(low, high)
    neg, pos = np.array(negatives, float), np.array(positives, float)
    raw = epsilon_from_rates(
        float(np.mean(neg >= threshold)), float(np.mean(pos < threshold)), delta=DELTA
    )

    loose = epsilon_at_threshold(neg, pos, threshold, delta=DELTA, confidence=low)
    tight = epsilon_at_threshold(neg, pos, threshold, delta=DELTA, confidence=high)

    assert 0 <= tight <= loose <= raw


@settings(max_examples=100, deadline=None)
@given(
    trials=st.integers(2, 40),
    data=st.data(),
    low=st.floats(0.05, 0.98),
    high=st.floats(0.05, 0.98),
)
def test_the_split_bound_is_nonnegative_monotone_and_below_its_raw_rates(
    trials: int, data: st.DataObject, low: float, high: float
) -> None:
    low, high = min(low, high), max(low, high)
    side = st.lists(st.integers(-5, 5), min_size=trials, max_size=trials)
    neg, pos = np.array(data.draw(side), float), np.array(data.draw(side), float)
    scores = {"s": (neg, pos)}

    loose = epsilon_lower_bound(scores, delta=DELTA, confidence=low)
    tight = epsilon_lower_bound(scores, delta=DELTA, confidence=high)

    cut, t = trials // 2, loose.threshold
    raw = epsilon_from_rates(
        float(np.mean(neg[cut:] >= t)), float(np.mean(pos[cut:] < t)), delta=DELTA
    )
    assert tight.threshold == loose.threshold  # the selection does not look at the confidence
    assert 0 <= tight.epsilon_lower_bound <= loose.epsilon_lower_bound <= raw


# -- the audit of a real local round ------------------------------------------------------------


def digits(n: int) -> Dataset:
    return load_digits().subset(np.arange(n, dtype=np.int64), name="digits head")


def test_the_canary_lights_the_quietest_pixels_and_takes_the_rarest_label() -> None:
    data = digits(64)
    flat = data.features.reshape(len(data), -1)

    canary = audit.make_canary(data)

    lit = np.flatnonzero(canary.features.ravel() == 1.0)
    assert canary.planted == 16
    assert len(lit) == 16
    assert flat[:, lit].var(axis=0).max() <= np.sort(flat.var(axis=0))[15]
    assert canary.features.ravel()[np.setdiff1d(np.arange(64), lit)].max() == flat.min(axis=0).max()
    assert canary.label == int(np.argmin(np.bincount(data.labels, minlength=10)))


def test_without_dp_the_audit_tells_the_canary_apart() -> None:
    torch.set_num_threads(1)
    data = digits(64)
    model = build_model("mlp", data.feature_shape, data.num_classes, seed=0)
    before = get_weights(model)
    train = TrainConfig(learning_rate=0.5, sample_rate=0.25, local_steps=4, batch_size=16)

    result = audit.audit_local_round(
        model, data, train, None, delta=DELTA, accountant="prv", trials=30
    )

    assert result.auc >= 0.9
    assert 0.5 < result.epsilon_lower_bound <= result.reachable
    assert result.accounted_epsilon is None
    assert not result.exceeds_accounting
    assert result.settings.private is False
    assert all(np.array_equal(before[k], v) for k, v in get_weights(model).items())


def test_with_strong_dp_the_bound_stays_below_the_accounting() -> None:
    torch.set_num_threads(1)
    data = digits(60)
    model = build_model("mlp", data.feature_shape, data.num_classes, seed=0)
    train = TrainConfig(learning_rate=0.5, sample_rate=0.25, local_steps=4, batch_size=16)
    dp = DpConfig(noise_multiplier=8.0, max_grad_norm=1.0)

    result = audit.audit_local_round(
        model, data, train, dp, delta=DELTA, accountant="prv", trials=12, confidence=0.99
    )

    assert result.accounted_epsilon is not None
    assert result.epsilon_lower_bound <= result.accounted_epsilon
    assert not result.exceeds_accounting
    assert result.settings.noise_multiplier == 8.0
    assert result.settings.steps == 4


def test_a_diverging_round_is_refused_by_name() -> None:
    data = digits(32)
    model = build_model("mlp", data.feature_shape, data.num_classes, seed=0)
    train = TrainConfig(learning_rate=1e38, local_steps=4, batch_size=8)  # float32 overflow

    with pytest.raises(InvalidInput, match="diverged"):
        audit.audit_local_round(model, data, train, None, delta=DELTA, accountant="prv", trials=2)


# -- fedmarket audit privacy --------------------------------------------------------------------


def tiny_task(tmp_path: Path) -> Path:
    path = tmp_path / "task.toml"
    path.write_text(
        "[federation]\ndevices = 25\n"
        "[training]\nsample_rate = 0.5\nlocal_steps = 2\nbatch_size = 32\n"
        "[privacy]\nnoise_multiplier = 4.0\n"
    )
    return path


def test_cli_audits_a_task_and_writes_the_result(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "audit.json"
    args = ["--config", str(tiny_task(tmp_path)), "--trials", "4", "--json", "--out", str(out)]

    assert invoke(monkeypatch, "audit", "privacy", *args) == 0

    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["trials"] == 4
    assert printed["settings"]["noise_multiplier"] == 4.0
    assert 0 <= printed["epsilon_lower_bound"] <= printed["accounted_epsilon"]
    assert printed["exceeds_accounting"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trials", "0"], "--trials must be >= 2"),
        (["--confidence", "1.5"], "confidence must lie strictly between 0 and 1"),
        (["--config", "missing.toml"], "task config missing.toml does not exist"),
        (["--device", "99", "--trials", "2"], "device must be in [0, 10), got 99"),
    ],
)
def test_cli_bad_input_fails_clearly_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "audit.json"

    assert invoke(monkeypatch, "audit", "privacy", "--out", str(out), *args) == 2

    assert f"error: {message}" in capsys.readouterr().err
    assert not out.exists()


def test_cli_warns_loudly_when_the_bound_exceeds_the_accounting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = audit.AuditSettings(
        private=True,
        examples=100,
        canary_label=0,
        canary_features=16,
        learning_rate=0.1,
        noise_multiplier=1.0,
        sample_rate=0.1,
        steps=10,
        max_grad_norm=1.0,
        delta=DELTA,
        accountant="prv",
    )
    wrong = audit.AuditResult(
        trials=100,
        auc=0.99,
        epsilon_lower_bound=3.0,
        confidence=0.95,
        accounted_epsilon=1.0,
        reachable=3.9,
        statistic="loss",
        threshold=0.0,
        settings=settings,
    )
    monkeypatch.setattr(audit, "audit_task", lambda *_, **__: wrong)

    assert invoke(monkeypatch, "audit", "privacy", "--trials", "2") == 0

    captured = capsys.readouterr()
    assert "WARNING: the empirical lower bound 3.000 exceeds the accounted epsilon 1.000" in (
        captured.err
    )
    assert "accounting" in captured.err
