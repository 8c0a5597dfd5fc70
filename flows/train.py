"""The training pipeline: check code → fetch → resolve defaults → preprocess → train → evaluate → publish → track →
notify."""

from __future__ import annotations

from prefect import flow

from buildkite.context import BuildContext
from flows.hooks import release_build_on_failure, stop_if_build_canceled
from params.model import DEFAULT_PARAMS_FILE, Params, load_params
from flows import steps
from trainkite.ids import resolve_model_id
from trainkite.run import Run


@flow(
    name="train",
    on_failure=[release_build_on_failure],
    on_crashed=[release_build_on_failure],
    on_cancellation=[release_build_on_failure],
)
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
    run = Run.of(params, resolve_model_id(model_id, build))
    with stop_if_build_canceled(build):
        steps.start_tracking(params)
        steps.check_code(build)
        dataset = steps.fetch_data(run, params)
        params = steps.resolve_defaults(run, params, dataset)
        features = steps.preprocess(run, dataset, params)
        trained = steps.train_model(run, features, params)
        report = steps.evaluate(run, trained, features, params, dataset)
        published = steps.publish(run, params, dataset, trained, report, build)
        tracking = steps.track(run, params, published, report, tags or [])
        steps.notify(build, published, report, tracking)
    summary = steps.report(published, report, tracking)
    steps.clean_up(run)  # scratch stays after a failure: a re-run resumes from it
    return summary
