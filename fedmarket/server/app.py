"""The aggregator's Flower ServerApp."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmarket.data.dataset import Dataset
from fedmarket.models.evaluation import Evaluation, evaluate
from fedmarket.models.registry import build_model
from fedmarket.models.weights import Weights, get_weights, set_weights
from fedmarket.server.plan import FederationPlan
from fedmarket.server.results import FederationResult
from fedmarket.server.rounds import (
    Evaluator,
    ModelObserver,
    RoundObserver,
    RoundPayer,
    run_rounds,
)
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
    payer: RoundPayer | None = None,
) -> ServerApp:
    """A ServerApp that runs ``plan`` and hands the result to ``on_done``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result = run_rounds(
            grid,
            plan,
            strategy,
            initial,
            evaluate,
            on_round,
            on_model,
            first_round=first_round,
            payer=payer,
        )
        if on_done is not None:
            on_done(result)

    return app


def starting_point(
    plan: FederationPlan, held_out: Dataset, resume: tuple[int, Weights] | None
) -> tuple[int, Weights, Evaluator]:
    """(first round, its global model, the server's evaluator on ``held_out``): round 1 from a
    fresh model, or the round after the last committed one from that round's model."""
    model = build_model(plan.model, held_out.feature_shape, held_out.num_classes, seed=plan.seed)
    first_round, initial = resume if resume is not None else (1, get_weights(model))

    def evaluator(weights: Weights) -> Evaluation:
        set_weights(model, weights)
        return evaluate(model, held_out)

    return first_round, initial, evaluator
