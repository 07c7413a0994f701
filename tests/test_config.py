"""Task configs (TOML -> typed models) and token amounts: defaults, refusals, exact money."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedmarket.config import TaskConfig
from fedmarket.exceptions import InvalidInput
from fedmarket.market.amounts import to_base_units, to_tokens

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "task.toml"
    path.write_text(text)
    return path


def test_an_empty_file_is_the_embedded_defaults(tmp_path: Path) -> None:
    config = TaskConfig.load(write(tmp_path, ""))

    assert config.federation.devices == 10
    assert config.privacy.epsilon_cap == 8.0
    assert config.reward_per_update == 10**18
    assert config.budget == 10**18 * 10 * 5  # every device in every round
    assert config.contributors_bps == 2000


def test_csv_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    config = TaskConfig.load(
        write(tmp_path, '[data]\nkind = "csv"\npath = "rows.csv"\nlabel_column = "y"\n')
    )
    source = config.data_source()
    assert (source.kind, Path(source.path), source.label_column) == (
        "csv",
        tmp_path / "rows.csv",
        "y",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[federation]\nround = 3\n", "federation.round: Extra inputs are not permitted"),
        ("[privacy]\nepsilon_cap = 0\n", "privacy.epsilon_cap: Input should be greater than 0"),
        ("[federation]\ndevices = 2\n", "secure aggregation needs at least 3 devices"),
        ("[federation]\nsecagg = false\n", "paid rounds need secure aggregation"),
        ('[market]\nreward_per_update = "abc"\n', "market.reward_per_update must be a number"),
        ('[market]\nprice = "0.0000000000000000001"\n', "more than 18 decimal places"),
        ('[market]\nbudget = "0.5"\n', "market.budget must cover at least one update"),
        ("[data\n", "is not valid TOML"),
    ],
)
def test_bad_configs_name_the_key_and_the_rule(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        TaskConfig.load(write(tmp_path, text))


def test_a_missing_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        TaskConfig.load(tmp_path / "nope.toml")


@pytest.mark.parametrize("name", ["digits_market", "csv_tabular"])
def test_the_examples_are_valid_configs(name: str) -> None:
    config = TaskConfig.load(EXAMPLES / name / "task.toml")
    assert config.market.enabled
    config.data_source().load()  # the data it names is there and loads


@given(st.decimals(min_value=0, max_value=10**12, places=18, allow_nan=False))
def test_token_amounts_round_trip_exactly(amount: Decimal) -> None:
    units = to_base_units(amount)
    assert Decimal(to_tokens(units)) == amount
    assert to_base_units(to_tokens(units)) == units


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "1e-19", "", "one"])
def test_bad_token_amounts_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        to_base_units(bad)
