import json
from pathlib import Path

import pytest
from cli_invoke import invoke


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--epsilon-cap", "0"], 2, "privacy.epsilon_cap: Input should be greater than 0"),
        (["--delta", "1.5"], 2, "privacy.delta: Input should be less than 1"),
        (["--delta", "0"], 2, "privacy.delta: Input should be greater than 0"),
        (["--rounds", "0"], 2, "federation.rounds: Input should be greater than or equal to 1"),
        (["--strategy", "fedsgdx"], 2, "fedsgdx"),
        (["--devices", "2000"], 4, "cannot give 2000 devices"),
        (["--noise-multiplier", "-1"], 2, "privacy.noise_multiplier: Input should be greater"),
        (["--devices", "2"], 2, "secure aggregation needs at least 3 devices"),
        (["--no-secagg"], 2, "paid rounds need secure aggregation"),
        (["--clip-range", "0"], 2, "federation.clip_range: Input should be greater than 0"),
        (["--config", "missing.toml"], 2, "task config missing.toml does not exist"),
    ],
)
def test_bad_demo_input_fails_clearly_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: list[str],
    code: int,
    message: str,
) -> None:
    out = tmp_path / "run"
    assert invoke(monkeypatch, "demo", "--out", str(out), *args) == code
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.integration
@pytest.mark.slow
def test_demo_defaults_reach_080_with_every_device_under_its_cap(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert invoke(monkeypatch, "demo", "--out", str(tmp_path / "run"), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["final_accuracy"] >= 0.80
    assert report["config"]["privacy"]["epsilon_cap"] <= 10
    assert report["delta"] == 1e-5
    assert all(d["epsilon"] <= d["epsilon_cap"] for d in report["devices"])
    assert all(d["rounds_trained"] == 5 for d in report["devices"])
    assert report["purchase"]["decrypted_accuracy"] == report["final_accuracy"]
    assert report["purchase"]["verified"] is True


@pytest.mark.integration
@pytest.mark.slow
def test_demo_without_secagg_sums_in_the_clear_and_allows_two_devices(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["--devices", "2", "--rounds", "1", "--no-secagg", "--no-market"]
    args += ["--out", str(tmp_path), "--json"]
    assert invoke(monkeypatch, "demo", *args) == 0
    (only,) = json.loads(capsys.readouterr().out)["rounds"]
    assert only["secure_aggregation"] is False
    assert only["clip_fraction"] is None
    assert only["trained"] == 2
