"""Scheduled retrain: train again only when the data changed (or when forced). Never deploys by itself:
promotion always goes through the deploy flow's human approval."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.train import train
from params.model import DEFAULT_PARAMS_FILE, Params, load_params
from flows import steps


@flow(name="retrain")
def retrain(params: Params = load_params(DEFAULT_PARAMS_FILE), force: bool = False) -> dict:
    """Retrain when the data fingerprint differs from the last model's.

    Args:
        params: Training parameters (defaults from params/sentiment.toml).
        force: Train even if the data did not change.
    """
    decision = steps.decide_retrain(params, force)
    get_run_logger().info("%s: %s", "retraining" if decision.retrain else "skipping", decision.reason)
    if not decision.retrain:
        return {"retrained": False, **decision.model_dump()}
    result = train(params=params, tags=["retrain"])
    return {"retrained": True, "model_id": result["model_id"], **decision.model_dump()}
