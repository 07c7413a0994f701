"""fedmarket: federated learning with differential privacy and an encrypted data market."""

from fedmarket.exceptions import FedmarketError
from fedmarket.privacy.ledger import PrivacyLedger
from fedmarket.secagg.config import SecAggConfig
from fedmarket.server.plan import FederationPlan
from fedmarket.simulation import SimulatedFleet, run_federation

__all__ = [
    "FederationPlan",
    "FedmarketError",
    "PrivacyLedger",
    "SecAggConfig",
    "SimulatedFleet",
    "run_federation",
]
__version__ = "0.1.0"
