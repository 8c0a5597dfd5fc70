"""Server-side automations that keep a Buildkite build from waiting forever on a dead training run.

The flow's own state hooks (flows/hooks.py) run in the flow process, or in the process worker
after it reports a crash. Nothing runs there when an ECS task is OOM-killed or its host
vanishes, so these two automations act from the Prefect server's side:

* `trainkite-release-build` (reactive): a flow run tagged `buildkite` enters Failed, TimedOut,
  Crashed or Cancelled -> run the `release-build` deployment with that run's ID, which
  annotates the build and releases its `training_finished` step with training-status=failed.
* `trainkite-stale-training-runs` (proactive): a run tagged `buildkite` sent a heartbeat and
  then nothing (no heartbeat, no final state) for ZOMBIE_AFTER_SECONDS -> mark it Crashed;
  that Crashed event fires the first automation. This covers a worker that died with its run.
* `trainkite-unstarted-training-runs` (proactive): a run tagged `buildkite` was scheduled and
  reached neither Running nor a final state within START_TIMEOUT_SECONDS (no worker polls its
  pool, its ECS task or GPU instance never came) -> mark it Crashed, as above. Without it a run
  that never starts sends no heartbeat, so the second automation never watches it.

Event names are `prefect.flow-run.<state name>` (prefect/server/models/events.py) and tags
appear as related resources `prefect.tag.<tag>` with role `tag`.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect.automations import AutomationCore, ChangeFlowRunState, EventTrigger, Posture, RunDeployment
from prefect.client.schemas.objects import StateType

from deployments.specs import BUILDKITE_TAG, START_TIMEOUT_SECONDS, ZOMBIE_AFTER_SECONDS

RELEASE_AUTOMATION = "trainkite-release-build"
STALE_AUTOMATION = "trainkite-stale-training-runs"
UNSTARTED_AUTOMATION = "trainkite-unstarted-training-runs"

# State *names*: TimedOut is a Failed-type state with its own event.
FAILURE_EVENTS = frozenset(
    {
        "prefect.flow-run.Failed",
        "prefect.flow-run.TimedOut",
        "prefect.flow-run.Crashed",
        "prefect.flow-run.Cancelled",
    }
)
FINAL_EVENTS = FAILURE_EVENTS | {"prefect.flow-run.Completed"}


def _tagged(tag: str) -> dict[str, str]:
    return {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{tag}"}


_BUILDKITE_RUNS = _tagged(BUILDKITE_TAG)


def release_build_automation(release_deployment_id: UUID) -> AutomationCore:
    return AutomationCore(
        name=RELEASE_AUTOMATION,
        description="A Buildkite-started flow run failed, crashed or was cancelled: release its build "
        "(annotation with style error + training_finished unblocked with training-status=failed).",
        trigger=EventTrigger(
            expect=set(FAILURE_EVENTS),
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=_BUILDKITE_RUNS,
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=release_deployment_id,
                # A plain-jinja parameter renders to a string (a bare "{{ }}" would be JSON-typed).
                parameters={"flow_run_id": {"__prefect_kind": "jinja", "template": "{{ flow_run.id }}"}},
            )
        ],
    )


def _crash_when_silent(
    *, name: str, description: str, after: str, expect: set[str], seconds: int, message: str, tag: str = BUILDKITE_TAG
) -> AutomationCore:
    """Proactive: after an `after` event of a run tagged `tag`, no `expect` event within `seconds` -> Crashed
    (whose event the release automation turns into a released build)."""
    return AutomationCore(
        name=name,
        description=description,
        trigger=EventTrigger(
            after={after},
            expect=expect,
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=_tagged(tag),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=seconds),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=message)],
    )


def stale_run_automation() -> AutomationCore:
    return _crash_when_silent(
        name=STALE_AUTOMATION,
        description=f"A Buildkite-started flow run sent no heartbeat or final state for "
        f"{ZOMBIE_AFTER_SECONDS} s (its process or host is gone): mark it Crashed so its build is released.",
        after="prefect.flow-run.heartbeat",
        expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
        seconds=ZOMBIE_AFTER_SECONDS,
        message=f"No heartbeat for {ZOMBIE_AFTER_SECONDS} s: the flow-run process or its host is gone "
        "(OOM kill, lost instance, dead worker).",
    )


def unstarted_run_automation(
    within_seconds: int = START_TIMEOUT_SECONDS, tag: str = BUILDKITE_TAG, name: str = UNSTARTED_AUTOMATION
) -> AutomationCore:
    """(`tag` and `name` differ only in tests, which must not touch every Buildkite-tagged run.)"""
    return _crash_when_silent(
        name=name,
        description=f"A Buildkite-started flow run did not start within {within_seconds} s: mark it Crashed so "
        "its build is released instead of waiting at training_finished.",
        after="prefect.flow-run.Scheduled",
        expect={"prefect.flow-run.Running", *FINAL_EVENTS},
        seconds=within_seconds,
        message=f"Did not start within {within_seconds} s: no worker is polling its work pool, or its "
        "infrastructure (ECS task, GPU instance) was never placed.",
        tag=tag,
    )


def desired_automations(release_deployment_id: UUID | None) -> list[AutomationCore]:
    found = [stale_run_automation(), unstarted_run_automation()]
    if release_deployment_id is not None:
        found.insert(0, release_build_automation(release_deployment_id))
    return found
