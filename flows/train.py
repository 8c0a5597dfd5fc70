"""The training pipeline: check code → fetch → resolve defaults → preprocess → train → evaluate → publish → track →
notify."""

from __future__ import annotations

from prefect import flow

from buildkite.context import BuildContext
from flows.hooks import release_build_on_failure, stop_if_build_canceled
from params.model import DEFAULT_PARAMS_FILE, Params, load_params
from flows import steps
from trainkite.ids import resolve_model_id


@flow(name="train", on_failure=[release_build_on_failure], on_crashed=[release_build_on_failure],
      on_cancellation=[release_build_on_failure])
def train(
    params: Params = load_params(DEFAULT_PARAMS_FILE),
    model_id: str | None = None,
    build: BuildContext | None = None,
    tags: list[str] | None = None,
) -> dict:
    """Train, evaluate and publish one text classifier.

    Args:
        params: Training parameters (defaults from params/sentiment.toml).
        model_id: Model ID; set by the launcher so a re-run resumes the same model. Empty = new ID.
        build: The Buildkite build that started this run, if any (its block step gets unblocked).
        tags: Extra tags for the W&B run (e.g. a sweep ID).
    """
    model_id = resolve_model_id(model_id, build)
    with stop_if_build_canceled(build):
        steps.start_tracking(params)
        steps.check_code(build)
        dataset = steps.fetch_data(params, model_id)
        params = steps.resolve_defaults(params, dataset)
        features = steps.preprocess(dataset, params, model_id)
        trained = steps.train_model(features, params, model_id)
        report = steps.evaluate(trained, features, params, model_id, dataset)
        published = steps.publish(params, model_id, dataset, trained, report, build)
        tracking = steps.track(params, published, report, tags or [])
        steps.notify(build, published, report, tracking)
    summary = steps.report(published, report, tracking)
    steps.clean_up(params, model_id)  # scratch stays after a failure: a re-run resumes from it
    return summary
