"""The aggregator side: federation plan, round loop and the Flower ServerApp."""

from fedmarket.server.app import make_server_app
from fedmarket.server.plan import FederationPlan
from fedmarket.server.results import FederationResult, RoundResult
from fedmarket.server.rounds import Evaluator, RoundObserver, run_rounds

__all__ = [
    "Evaluator",
    "FederationPlan",
    "FederationResult",
    "RoundObserver",
    "RoundResult",
    "make_server_app",
    "run_rounds",
]
