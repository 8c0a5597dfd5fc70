"""Thin Prefect tasks over the plain step functions. Policy (caching, retries) lives here; logic doesn't.

Every training task takes the run's identity (`trainkite.run.Run`: model name, model ID, store, workdir), made
once by the flow. Cache keys hold the model ID, the inputs that decide the output and the code version, so
re-running a failed or crashed run with the same inputs reuses every step that finished
(state `Cached`), while a code or parameter change recomputes. Preprocessing is keyed by data
fingerprint + preprocess params only, so it is shared across runs and sweep configurations.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from buildkite.context import BuildContext
from params.model import Params
from tasks import data, defaults
import tasks.evaluate
from models import registry
import tasks.notify
from tasks import provenance
import tasks.publish
import tasks.track
from models.features import FeaturesRef, index_key
from models.trained import TrainedModel
from tasks.retrain import RetrainDecision
from tasks.retrain import decide as retrain_decide
from trainkite.errors import UserInputError
from trainkite.lineage import code_version
from trainkite.run import Run
from trainkite.snapshot import DatasetRef, local_snapshot
from trainkite.runfiles import METRICS, SNAPSHOT, WEIGHTS, run_key
from trainkite.store import ArtifactStore, open_store


def _not_user_error(task, task_run, state) -> bool:
    # Bad data or params will not fix themselves: retry only transient failures.
    try:
        state.result()
    except UserInputError:
        return False
    except Exception:
        return True
    return False


def _key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, (*parts, code_version()))).encode()).hexdigest()[:32]


def _fetch_key(context, p) -> str:
    run, params = p["run"], p["params"]
    return "fetch-" + _key(run.store.root, run.model_id, params.data.model_dump_json(), params.evaluation.query)


def _preprocess_key(context, p) -> str:
    return "preprocess-" + _key(p["run"].store.root, registry.features_key(p["dataset"].fingerprint, p["params"]))


def _train_key(context, p) -> str:
    run = p["run"]
    return "train-" + _key(run.store.root, run.model_id, p["features"].key, p["params"].params_hash())


# Every key names the store: a step's outputs live there, so a hit for another store (same model ID and
# inputs, another artifact root or TRAINKITE_HOME) would hand on keys that do not exist in this one.
def _evaluate_key(context, p) -> str:
    run, params = p["run"], p["params"]
    # The comparison is part of the result: a new champion (or the override) means evaluating again.
    from tasks.champion import allow_worse, champion_id

    champion = champion_id(run.store, run.model_name) if p.get("dataset") is not None else None
    return "evaluate-" + _key(
        run.store.root,
        run.model_id,
        p["trained"].weights_key,
        params.params_hash(),
        champion,
        allow_worse(),
    )


def _track_key(context, p) -> str:
    return "track-" + _key(p["published"].artifact_uri, p["published"].model_id, p["published"].manifest["files"])


_cached = {"persist_result": True, "result_serializer": "json"}


def _reusable(step: Task, store: ArtifactStore, staged: str) -> Task:
    """`step` where its staged output `staged` is in the store; else `step` ignoring, then replacing, its cache
    entry. A cached result names store keys: once the scratch is gone (removed after publish, by `trainkite gc`,
    or the store emptied), the entry would hand on keys to nothing, and a re-run of that model ID recomputes
    instead (deterministic: the same files, which publish accepts as the same model). The first run of a step
    has no output yet either; it has no entry to ignore."""
    return step if store.exists(staged) else step.with_options(refresh_cache=True)


def start_tracking(params: Params) -> None:
    """Start W&B (import, service) in the background while the data is fetched. Deliberately not a task: it
    returns at once, and a task's round trips to the Prefect API would cost more than it saves."""
    tasks.track.start(params)


@task(name="check_code", cache_policy=NONE)
def check_code(build: BuildContext | None) -> dict:
    return provenance.check_code_commit(build)


@task(
    name="fetch_data",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_not_user_error,
    cache_key_fn=_fetch_key,
    **_cached,
)
def _fetch_data(run: Run, params: Params) -> DatasetRef:
    return data.fetch_dataset(params, run.workdir, run.store, run.prefix)


def fetch_data(run: Run, params: Params) -> DatasetRef:
    return _reusable(_fetch_data, run.store, run_key(run.prefix, SNAPSHOT))(run, params)


@task(name="resolve_defaults", cache_policy=NONE)
def resolve_defaults(run: Run, params: Params, dataset: DatasetRef) -> Params:
    # Cheap (one read of the snapshot's text column) and a pure function of params + rows, so a re-run or a
    # resumed run resolves the same values without a cache.
    stats = defaults.dataset_stats(
        local_snapshot(dataset, run.store),
        params.preprocess.ngram_max,
        len(dataset.labels),
        max_tokens=params.preprocess.max_tokens,
    )
    resolved, table = defaults.resolve_params(params, stats)
    create_table_artifact(
        key="resolved-params",
        description="parameters used: set by the user or from the data",
        table=[{"key": k, **v} for k, v in table.items()],
    )
    create_markdown_artifact(
        key="data-statistics",
        description="what the defaults were resolved from",
        markdown="\n".join(f"- **{k}**: {v}" for k, v in stats.model_dump().items()),
    )
    return resolved


@task(name="preprocess", cache_key_fn=_preprocess_key, **_cached)
def _preprocess(run: Run, dataset: DatasetRef, params: Params) -> FeaturesRef:
    return registry.featurize(dataset, params, run.store, run.workdir)


def preprocess(run: Run, dataset: DatasetRef, params: Params) -> FeaturesRef:
    staged = index_key(registry.features_key(dataset.fingerprint, params))
    return _reusable(_preprocess, run.store, staged)(run, dataset, params)


@task(name="train", cache_key_fn=_train_key, **_cached)
def _train_model(run: Run, features: FeaturesRef, params: Params) -> TrainedModel:
    # With fetch and preprocess served from the cache (another TRAINKITE_HOME or a cleared runs/ folder, same
    # Prefect server and store) nothing has made the workdir yet.
    run.workdir.mkdir(parents=True, exist_ok=True)
    return registry.train(features, params, run.store, run.ref, run.workdir)


def train_model(run: Run, features: FeaturesRef, params: Params) -> TrainedModel:
    return _reusable(_train_model, run.store, run_key(run.prefix, WEIGHTS))(run, features, params)


@task(name="evaluate", cache_key_fn=_evaluate_key, **_cached)
def _evaluate(
    run: Run, trained: TrainedModel, features: FeaturesRef, params: Params, dataset: DatasetRef | None = None
) -> tasks.evaluate.EvalReport:
    return tasks.evaluate.evaluate(trained, features, params, run.store, run.workdir, run.prefix, dataset)


def evaluate(
    run: Run, trained: TrainedModel, features: FeaturesRef, params: Params, dataset: DatasetRef | None = None
) -> tasks.evaluate.EvalReport:
    return _reusable(_evaluate, run.store, run_key(run.prefix, METRICS))(run, trained, features, params, dataset)


@task(name="publish", retries=2, retry_delay_seconds=5, retry_condition_fn=_not_user_error, cache_policy=NONE)
def publish(
    run: Run,
    params: Params,
    dataset: DatasetRef,
    trained: TrainedModel,
    report: tasks.evaluate.EvalReport,
    build: BuildContext | None,
) -> tasks.publish.Published:
    # Idempotent by itself: re-publishing identical files returns the existing manifest.
    return tasks.publish.publish_model(
        run=run, params=params, dataset=dataset, trained=trained, report=report, build=build
    )


@task(name="track", cache_key_fn=_track_key, **_cached)
def track(
    run: Run, params: Params, published: tasks.publish.Published, report: tasks.evaluate.EvalReport, tags: list[str]
) -> dict | None:
    return tasks.track.track_run(params=params, published=published, report=report, store=run.store, tags=tags)


def _wandb_link(tracking: dict | None) -> str:
    return tasks.track.run_url(tracking) or (f"offline run `{tracking['run_id']}`" if tracking else "tracking off")


def _not_refused_by_buildkite(task, task_run, state) -> bool:
    # The client already retried 5xx/429/network errors; a 401/403/404/422 (expired token, missing
    # scope, canceled build) will not fix itself in 10 s, so fail at once and let the failure hook report it.
    from buildkite.client import BuildkiteError

    try:
        state.result()
    except BuildkiteError as err:
        return err.status is None or err.status >= 500 or err.status == 429
    except Exception:
        return True
    return False


@task(name="notify", retries=1, retry_delay_seconds=10, retry_condition_fn=_not_refused_by_buildkite, cache_policy=NONE)
def notify(
    build: BuildContext | None,
    published: tasks.publish.Published,
    report: tasks.evaluate.EvalReport,
    tracking: dict | None,
) -> str:
    fields = tasks.notify.success_fields(
        model_id=published.model_id,
        artifact_uri=published.artifact_uri,
        wandb_run_id=tracking["run_id"] if tracking else None,
        docker_image=published.manifest["lineage"].get("docker_image"),
        metrics_line=tasks.evaluate.one_line(report.summary),
        comparison=report.metrics.get("comparison"),
    )
    md = tasks.notify.annotation_markdown(
        published.model_id,
        published.artifact_uri,
        report.summary,
        _wandb_link(tracking),
        report.metrics.get("comparison"),
    )
    return tasks.notify.notify_success(build, fields, md)


@task(name="report", cache_policy=NONE)
def report(published: tasks.publish.Published, report: tasks.evaluate.EvalReport, tracking: dict | None) -> dict:
    comparison = report.metrics.get("comparison")
    md = tasks.notify.annotation_markdown(
        published.model_id, published.artifact_uri, report.summary, _wandb_link(tracking), comparison
    )
    create_markdown_artifact(key="model-card", markdown=md, description=f"model {published.model_id}")
    create_table_artifact(
        key="model-metrics",
        table=[{"metric": k, "value": v} for k, v in report.summary.items()],
        description=f"metrics of {published.model_id}",
    )
    _report_evidence(published, report, comparison)
    return {
        "model_id": published.model_id,
        "artifact_uri": published.artifact_uri,
        "metrics": report.summary,
        "wandb": tracking,
    }


def _report_evidence(
    published: tasks.publish.Published, report: tasks.evaluate.EvalReport, comparison: dict | None
) -> None:
    """The comparison and the confusion matrices in the run's Artifacts tab (tables, and the images inline)."""
    import tasks.compare

    labels = published.manifest["labels"]
    rows = tasks.compare.comparison_table(comparison)
    if rows:
        create_table_artifact(
            key="champion-comparison", table=rows, description=tasks.compare.evidence_line(comparison)
        )
    split = "evaluation" if "evaluation" in report.metrics else "test"
    if split not in report.metrics:
        return
    cm = report.metrics[split]["confusion"]
    if cm is not None:  # None above CONFUSION_MAX_CLASSES classes: per-class F1 is the evidence then
        create_table_artifact(
            key="confusion-matrix",
            table=tasks.compare.confusion_table(cm, labels),
            description=f"{published.model_id} on the {split} split (rows: true, columns: predicted)",
        )
    images = {"challenger": report.plots.get(split), "champion": report.plots.get("champion")}
    md = [
        f"### Confusion matrices on the {split} split",
        "",
        f"**Verdict:** {tasks.compare.evidence_line(comparison)}",
        "",
    ]
    for who, path in images.items():
        if path and Path(path).is_file():
            data = base64.b64encode(Path(path).read_bytes()).decode()
            md += [f"**{who}**", "", f"![{who} confusion matrix](data:image/png;base64,{data})", ""]
    create_markdown_artifact(
        key="confusion-matrices", markdown="\n".join(md), description=f"confusion matrices of {published.model_id}"
    )


@task(name="clean_up", cache_policy=NONE)
def clean_up(run: Run) -> dict:
    """The model is published: its scratch in the store and its local run folder are no longer needed."""
    from trainkite.runfiles import remove_run_files

    return remove_run_files(run.store, run.prefix, run.workdir)


@task(name="decide_retrain", cache_policy=NONE)
def decide_retrain(params: Params, force: bool) -> RetrainDecision:
    d = retrain_decide(params, open_store(params.artifacts.root), force)
    verdict = "retrain" if d.retrain else "skip"
    create_markdown_artifact(
        key="retrain-decision", markdown=f"**{verdict}**: {d.reason}", description="scheduled retrain decision"
    )
    return d
