"""The aggregator's Flower ServerApp."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmarket.models.weights import Weights
from fedmarket.server.plan import FederationPlan
from fedmarket.server.results import FederationResult
from fedmarket.server.rounds import Evaluator, ModelObserver, RoundObserver, run_rounds
from strategies import Strategy


def make_server_app(
    plan: FederationPlan,
    strategy: Strategy,
    initial: Weights,
    evaluate: Evaluator,
    *,
    on_round: RoundObserver | None = None,
    on_model: ModelObserver | None = None,
    on_done: Callable[[FederationResult], None] | None = None,
    first_round: int = 1,
) -> ServerApp:
    """A ServerApp that runs ``plan`` and hands the result to ``on_done``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result = run_rounds(
            grid, plan, strategy, initial, evaluate, on_round, on_model, first_round=first_round
        )
        if on_done is not None:
            on_done(result)

    return app
