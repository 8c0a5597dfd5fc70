"""Thin Prefect tasks over the plain step functions. Policy (caching, retries) lives here; logic doesn't."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from buildkite.context import BuildContext
from params.model import Params
from tasks import data, evaluate as ev, notify as nt, preprocess as pp, publish as pb, track as tr, train as tn
from trainkite.errors import UserInputError
from trainkite.home import runs_dir
from trainkite.store import ArtifactStore, open_store


def _store(params: Params) -> ArtifactStore:
    return open_store(params.artifacts.root)


def _workdir(model_id: str) -> Path:
    return runs_dir() / model_id


def _not_user_error(task, task_run, state) -> bool:
    # Bad data or params will not fix themselves: retry only transient failures.
    try:
        state.result()
    except UserInputError:
        return False
    except Exception:
        return True
    return False


@task(name="fetch_data", retries=2, retry_delay_seconds=5, retry_condition_fn=_not_user_error, cache_policy=NONE)
def fetch_data(params: Params, model_id: str) -> data.DatasetRef:
    return data.fetch_dataset(params, _workdir(model_id))


def _preprocess_key(context, parameters) -> str:
    p: Params = parameters["params"]
    ds: data.DatasetRef = parameters["dataset"]
    return f"preprocess-{_store(p).root}-{pp.cache_key(ds.fingerprint, p.preprocess)}"


@task(name="preprocess", cache_key_fn=_preprocess_key, persist_result=True, result_serializer="json")
def preprocess(dataset: data.DatasetRef, params: Params, model_id: str) -> pp.FeaturesRef:
    return pp.preprocess(dataset, params.preprocess, _store(params), _workdir(model_id))


@task(name="train", cache_policy=NONE)
def train_model(features: pp.FeaturesRef, params: Params, model_id: str) -> tn.TrainedModel:
    from trainkite.manifest import ModelRef

    return tn.train_model(features, params, _store(params), ModelRef(params.model.name, model_id),
                          _workdir(model_id))


@task(name="evaluate", cache_policy=NONE)
def evaluate(trained: tn.TrainedModel, features: pp.FeaturesRef, params: Params, model_id: str) -> ev.EvalReport:
    return ev.evaluate(trained, features, params, _store(params), _workdir(model_id))


@task(name="publish", retries=2, retry_delay_seconds=5, retry_condition_fn=_not_user_error, cache_policy=NONE)
def publish(params: Params, model_id: str, dataset: data.DatasetRef, trained: tn.TrainedModel,
            report: ev.EvalReport, build: BuildContext | None) -> pb.Published:
    return pb.publish_model(params=params, model_id=model_id, dataset=dataset, trained=trained, report=report,
                            store=_store(params), workdir=_workdir(model_id), build=build)


@task(name="track", cache_policy=NONE)
def track(params: Params, published: pb.Published, report: ev.EvalReport, tags: list[str]) -> dict | None:
    return tr.track_run(params=params, published=published, report=report, store=_store(params), tags=tags)


@task(name="notify", retries=1, retry_delay_seconds=10, cache_policy=NONE)
def notify(build: BuildContext | None, published: pb.Published, report: ev.EvalReport,
           tracking: dict | None) -> str:
    wandb_link = tr.run_url(tracking) or (f"offline run `{tracking['run_id']}`" if tracking else "tracking off")
    fields = nt.success_fields(
        model_id=published.model_id, artifact_uri=published.artifact_uri,
        wandb_run_id=tracking["run_id"] if tracking else None,
        docker_image=published.manifest["lineage"].get("docker_image"), metrics_line=ev.one_line(report.summary))
    md = nt.annotation_markdown(published.model_id, published.artifact_uri, report.summary, wandb_link)
    return nt.notify_success(build, fields, md)


@task(name="report", cache_policy=NONE)
def report(published: pb.Published, report: ev.EvalReport, tracking: dict | None) -> dict:
    wandb_link = tr.run_url(tracking) or (f"offline run `{tracking['run_id']}`" if tracking else "tracking off")
    md = nt.annotation_markdown(published.model_id, published.artifact_uri, report.summary, wandb_link)
    create_markdown_artifact(key="model-card", markdown=md, description=f"model {published.model_id}")
    create_table_artifact(key="model-metrics", table=[{"metric": k, "value": v} for k, v in report.summary.items()],
                          description=f"metrics of {published.model_id}")
    return {"model_id": published.model_id, "artifact_uri": published.artifact_uri, "metrics": report.summary,
            "wandb": tracking}
