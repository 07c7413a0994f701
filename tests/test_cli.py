import json
from pathlib import Path

import pytest
from cli_invoke import invoke


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--epsilon-cap", "0"], 2, "epsilon cap must be > 0"),
        (["--delta", "1.5"], 2, "delta must lie strictly between 0 and 1"),
        (["--delta", "0"], 2, "delta must lie strictly between 0 and 1"),
        (["--rounds", "0"], 2, "rounds must be >= 1"),
        (["--strategy", "fedsgdx"], 2, "fedsgdx"),
        (["--devices", "2000"], 4, "cannot give 2000 devices"),
        (["--noise-multiplier", "-1"], 2, "noise_multiplier must be > 0"),
        (["--devices", "2"], 2, "secure aggregation needs at least 3 devices"),
        (["--clip-range", "0"], 2, "clip_range must be a finite number > 0"),
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
def test_demo_small_run_writes_report_and_plots(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert (
        invoke(monkeypatch, "demo", "--devices", "3", "--rounds", "2", "--out", str(out), "--json")
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for key in ("accuracy", "loss", "trained", "declined", "epsilon_max", "epsilon_median"):
        assert key in report["rounds"][0]
    for r in report["rounds"]:
        assert r["secure_aggregation"] is True
        assert sorted(r["survivors"]) == ["device-0", "device-1", "device-2"]
        assert r["dropped"] == {}
        assert 0 <= r["clip_fraction"] < 0.01
    assert report["delta"] == 1e-5
    assert {d["device"] for d in report["devices"]} == {
        "device-0",
        "device-1",
        "device-2",
    }
    assert all(0 < d["epsilon"] <= d["epsilon_cap"] for d in report["devices"])
    assert (out / "accuracy.png").stat().st_size > 1000
    assert (out / "epsilon.png").exists()
    assert invoke(monkeypatch, "demo", "--out", str(out)) == 2  # never overwrites a report


@pytest.mark.integration
@pytest.mark.slow
def test_demo_defaults_reach_080_with_every_device_under_its_cap(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert invoke(monkeypatch, "demo", "--out", str(tmp_path / "run"), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["final_accuracy"] >= 0.80
    assert report["config"]["epsilon_cap"] <= 10
    assert report["delta"] == 1e-5
    assert all(d["epsilon"] <= d["epsilon_cap"] for d in report["devices"])
    assert all(d["rounds_trained"] == 5 for d in report["devices"])


@pytest.mark.integration
@pytest.mark.slow
def test_demo_without_secagg_sums_in_the_clear_and_allows_two_devices(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["--devices", "2", "--rounds", "1", "--no-secagg", "--out", str(tmp_path), "--json"]
    assert invoke(monkeypatch, "demo", *args) == 0
    (only,) = json.loads(capsys.readouterr().out)["rounds"]
    assert only["secure_aggregation"] is False
    assert only["clip_fraction"] is None
    assert only["trained"] == 2
