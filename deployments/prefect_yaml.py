"""`prefect.yaml` at the repo root, generated from deployments/specs.py (the one list of deployments).

`trainkite deployments apply` and `prefect deploy --all` then create the same deployments: same names,
entrypoints, pools, job variables, descriptions, tags, concurrency limits, schedules. Regenerate after
changing specs.py (a test fails while the file is stale):

    python -m deployments.prefect_yaml          # writes prefect.yaml
    python -m deployments.prefect_yaml --check  # exit 1 if prefect.yaml differs

What `prefect deploy` cannot take from this file: work pools (`deployments apply` creates them; create
them first or `prefect deploy` asks), the release automations (apply), and the parameter form's tweaks
(hidden fields; `prefect deploy` builds the form from the flow's signature as it is).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from deployments.specs import DEPLOYMENTS, DeploymentSpec
from trainkite.home import REPO_ROOT

PREFECT_YAML = REPO_ROOT / "prefect.yaml"
HEADER = (
    "# Generated from deployments/specs.py by `python -m deployments.prefect_yaml`: edit specs.py, not this.\n"
    "# `prefect deploy --all` and `trainkite deployments apply` create the same deployments.\n"
)


def _deployment(spec: DeploymentSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": spec.name,
        "entrypoint": spec.entrypoint,
        "description": spec.description,
        "tags": sorted(spec.tags),
        "concurrency_limit": spec.concurrency_limit,
        "enforce_parameter_schema": True,
        "work_pool": {"name": spec.pool, "job_variables": spec.job_variables},
        "schedules": (
            [{"cron": spec.cron, "timezone": spec.timezone, "slug": "trainkite", "active": True}] if spec.cron else []
        ),
    }
    if spec.path != str(REPO_ROOT):
        # Code baked into an image: the flow-run process changes into that folder. Local deployments use
        # the folder `prefect deploy` runs in (its default pull step), as apply uses the checkout it runs in.
        out["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": spec.path}}]
    return out


class _NoAliases(yaml.SafeDumper):
    """Shared dicts (the env of several specs) written out in full: a reader should not chase &id001."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(specs: tuple[DeploymentSpec, ...] = DEPLOYMENTS) -> str:
    present = list(specs)
    doc = {
        "name": "trainkite",
        "prefect-version": ">=3.9,<4",
        "build": None,
        "push": None,
        "deployments": [_deployment(s) for s in present],
    }
    return HEADER + yaml.dump(doc, Dumper=_NoAliases, sort_keys=False, width=110, allow_unicode=True)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not PREFECT_YAML.is_file() or PREFECT_YAML.read_text() != text:
            print("prefect.yaml is stale: run `python -m deployments.prefect_yaml`", file=sys.stderr)
            return 1
        return 0
    partial = PREFECT_YAML.with_suffix(".yaml.partial")
    partial.write_text(text)
    Path(partial).replace(PREFECT_YAML)
    print(PREFECT_YAML)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
