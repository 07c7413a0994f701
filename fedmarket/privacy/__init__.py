"""Differential privacy on the device: Opacus DP-SGD and the persistent privacy ledger."""

from fedmarket.privacy.accounting import Spend, calibrate_noise, epsilon
from fedmarket.privacy.config import AccountantKind, DpConfig, GradSampleMode, TrainConfig
from fedmarket.privacy.ledger import PrivacyLedger, Reservation
from fedmarket.privacy.replay import LedgerEntry, PaidRound
from fedmarket.privacy.training import LocalTrainResult, plan_spend, train_plain, train_private

__all__ = [
    "AccountantKind",
    "DpConfig",
    "GradSampleMode",
    "LedgerEntry",
    "LocalTrainResult",
    "PaidRound",
    "PrivacyLedger",
    "Reservation",
    "Spend",
    "TrainConfig",
    "calibrate_noise",
    "epsilon",
    "plan_spend",
    "train_plain",
    "train_private",
]
