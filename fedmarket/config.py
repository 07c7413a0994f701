"""Where fedmarket keeps its state, and the typed task config (TOML -> pydantic models).

A task config describes one federation and its market terms. Every field has a default, so an
empty file is the demo's embedded defaults; unknown keys are refused so a typo never passes
silently. Paths in ``[data]`` are relative to the config file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedmarket.data.source import DataKind, DataSource
from fedmarket.exceptions import InvalidInput
from fedmarket.market.amounts import to_base_units
from fedmarket.models.registry import ModelName
from fedmarket.privacy.config import AccountantKind, DpConfig, TrainConfig
from fedmarket.secagg.config import MIN_COHORT, SecAggConfig
from fedmarket.secagg.parameters import DEFAULT_ASSUMPTIONS, Assumptions, choose
from strategies import StrategyName

HOME_ENV = "FEDMARKET_HOME"


def fedmarket_home() -> Path:
    """Return the data directory: ``$FEDMARKET_HOME`` or ``~/.fedmarket``."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".fedmarket"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(_Section):
    kind: DataKind = "digits"
    path: str = ""
    label_column: str = "label"
    labels_path: str = ""
    holdout: float = Field(0.2, gt=0, lt=1)
    partition: Literal["dirichlet", "iid"] = "dirichlet"
    alpha: float = Field(0.5, gt=0)


class FederationSection(_Section):
    devices: int = Field(10, ge=1)
    rounds: int = Field(5, ge=1)
    strategy: StrategyName = "fedavg"
    model: ModelName = "mlp"
    seed: int = 0
    lr_decay: float = Field(0.8, gt=0, le=1)
    secagg: bool = True
    clip_range: float = Field(SecAggConfig().clip_range, gt=0)
    # SecAgg+ sizes k and t for these (Bell et al.); devices refuse weaker rounds
    colluding_fraction: float = Field(DEFAULT_ASSUMPTIONS.corrupt_fraction, ge=0, lt=1)
    dropout_fraction: float = Field(DEFAULT_ASSUMPTIONS.dropout_fraction, ge=0, lt=1)
    round_timeout: float = Field(600.0, gt=0)  # seconds devices get to train and upload
    stage_timeout: float = Field(SecAggConfig().setup_timeout, gt=0)  # other SecAgg+ stages


class TrainingSection(_Section):
    """Public local-training settings (see :class:`fedmarket.privacy.config.TrainConfig`):
    each step samples every record with probability ``sample_rate``, so a device with n
    records expects batches of n * sample_rate; ``batch_size`` is the public normalizer."""

    learning_rate: float = Field(2.5, gt=0)
    momentum: float = Field(0.5, ge=0, lt=1)
    sample_rate: float = Field(0.33, gt=0, le=1)
    local_steps: int = Field(12, ge=1)
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _no_epochs(cls, data: object) -> object:
        if isinstance(data, dict) and "local_epochs" in data:
            raise ValueError(
                "local_epochs is gone: epochs depend on each device's number of records, "
                "which must stay private; set local_steps and sample_rate instead (e.g. 4 "
                "epochs of batch 64 on 240 records: sample_rate = 0.27, local_steps = 16)"
            )
        return data


class PrivacySection(_Section):
    epsilon_cap: float = Field(8.0, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    noise_multiplier: float = Field(2.3, gt=0)
    max_grad_norm: float = Field(0.5, gt=0)
    accountant: AccountantKind = "prv"


class MarketSection(_Section):
    """Token amounts are decimal text in whole tokens (18 decimals): ``"0.5"``."""

    enabled: bool = True
    reward_per_update: str = "1"
    budget: str = ""  # default: enough for every device in every round
    price: str = "25"
    contributors_share: float = Field(0.2, ge=0, le=1)
    key_timeout: float = Field(120.0, gt=0)  # seconds a buyer waits for the seller's key
    payout_seed: str = "fedmarket-demo"  # simulated devices' payout keys (simulation only)


class TaskConfig(_Section):
    """One federation and its market terms."""

    data: DataSection = DataSection()
    federation: FederationSection = FederationSection()
    training: TrainingSection = TrainingSection()
    privacy: PrivacySection = PrivacySection()
    market: MarketSection = MarketSection()
    base: Path = Path(".")  # folder relative data paths resolve against

    @classmethod
    def load(cls, path: Path) -> TaskConfig:
        """Read and validate a TOML task config; errors name the file and the key."""
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise InvalidInput(f"task config {path} does not exist") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInput(f"task config {path} is not valid TOML ({exc})") from None
        return cls.parse(document, base=path.resolve().parent, origin=str(path))

    @classmethod
    def parse(
        cls, document: dict[str, object], *, base: Path = Path("."), origin: str = "task config"
    ) -> TaskConfig:
        try:
            config = cls.model_validate({**document, "base": base})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidInput(f"{origin}: {problems}") from None
        config.check()
        return config

    def updated(self, **sections: dict[str, object]) -> TaskConfig:
        """A copy with some fields replaced (``federation={"rounds": 2}``), validated again."""
        document = self.model_dump()
        for name, values in sections.items():
            document[name].update({k: v for k, v in values.items() if v is not None})
        return TaskConfig.parse(document, base=self.base, origin="options")

    def check(self) -> None:
        """Rules across sections and money amounts, checked before anything runs."""
        if self.federation.secagg and self.federation.devices < MIN_COHORT:
            raise InvalidInput(
                f"secure aggregation needs at least {MIN_COHORT} devices, got "
                f"{self.federation.devices}; add devices or turn secure aggregation off"
            )
        if self.federation.secagg:
            try:
                choose(self.federation.devices, self.secagg_assumptions())
            except InvalidInput as exc:
                raise InvalidInput(
                    f"[federation] {exc}. With few devices, state colluding_fraction = 0 "
                    "(no device colludes with the aggregator) or add devices"
                ) from None
        if self.market.enabled:
            if not self.federation.secagg:
                raise InvalidInput(
                    "paid rounds need secure aggregation (receipts sign masked uploads); turn "
                    "the market off (--no-market, or [market] enabled = false) to sum in the clear"
                )
            if self.reward_per_update <= 0 or self.price <= 0:
                raise InvalidInput("market.reward_per_update and market.price must be > 0")
            if self.budget < self.reward_per_update:
                raise InvalidInput(
                    f"market.budget must cover at least one update ({self.market.reward_per_update}"
                    " tokens)"
                )

    # -- derived settings ------------------------------------------------------------------------

    @property
    def reward_per_update(self) -> int:
        return to_base_units(self.market.reward_per_update, what="market.reward_per_update")

    @property
    def budget(self) -> int:
        if not self.market.budget:
            return self.reward_per_update * self.federation.devices * self.federation.rounds
        return to_base_units(self.market.budget, what="market.budget")

    @property
    def price(self) -> int:
        return to_base_units(self.market.price, what="market.price")

    @property
    def contributors_bps(self) -> int:
        return round(self.market.contributors_share * 10_000)

    def data_source(self) -> DataSource:
        def resolve(path: str) -> str:
            return str(self.base / path) if path else ""

        d = self.data
        return DataSource(
            kind=d.kind,
            path=resolve(d.path),
            label_column=d.label_column,
            labels_path=resolve(d.labels_path),
        )

    def train_config(self) -> TrainConfig:
        t = self.training
        return TrainConfig(
            learning_rate=t.learning_rate,
            momentum=t.momentum,
            sample_rate=t.sample_rate,
            local_steps=t.local_steps,
            batch_size=t.batch_size,
        )

    def dp_config(self) -> DpConfig:
        return DpConfig(
            noise_multiplier=self.privacy.noise_multiplier,
            max_grad_norm=self.privacy.max_grad_norm,
        )

    def secagg_assumptions(self) -> Assumptions:
        return dataclasses.replace(
            DEFAULT_ASSUMPTIONS,
            corrupt_fraction=self.federation.colluding_fraction,
            dropout_fraction=self.federation.dropout_fraction,
        )

    def secagg_config(self) -> SecAggConfig | None:
        return (
            SecAggConfig(
                clip_range=self.federation.clip_range,
                assumptions=self.secagg_assumptions(),
                setup_timeout=self.federation.stage_timeout,
                share_timeout=self.federation.stage_timeout,
                unmask_timeout=self.federation.stage_timeout,
            )
            if self.federation.secagg
            else None
        )
