"""The floors of ARCHITECTURE.md hold: imports only point down, and the lower floors load without the upper ones'
libraries (a notebook can use the store or the model without Prefect, typer or rich)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# What each package may import from the project (besides itself). serving's entrypoint is an entry point;
# the rest of serving sits on the model and the contracts only.
ALLOWED = {
    "trainkite": set(),
    "params": {"trainkite"},
    "buildkite": {"trainkite"},
    "models": {"trainkite", "params"},
    "tasks": {"trainkite", "params", "buildkite", "models"},
    "serving": {"trainkite", "params", "models"},
    "deployments": {"trainkite", "params"},
    "flows": {"trainkite", "params", "buildkite", "models", "tasks"},
    "cli": {"trainkite", "params", "buildkite", "models", "tasks", "serving", "flows", "deployments"},
}
ENTRY_MODULES = {"serving/entrypoint.py", "serving/__main__.py"}


def _project_imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name.split(".")[0]) for a in node.names)
    return [(line, top) for line, top in out if top in ALLOWED]


def test_imports_only_point_down():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            ok = ALLOWED["cli"] if rel in ENTRY_MODULES else allowed
            wrong += [
                f"{rel}:{line} imports {top}"
                for line, top in _project_imports(path)
                if top != package and top not in ok
            ]
    assert not wrong, "imports that point up a floor:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    ("modules", "absent"),
    [
        (
            "trainkite.store, trainkite.manifest, trainkite.ids, trainkite.lineage, trainkite.errors, params, "
            "buildkite.client, buildkite.context",
            ("prefect", "typer", "rich", "torch"),
        ),
        ("models.registry, models.predictor, models.features", ("prefect", "typer", "rich")),
        ("tasks.data, tasks.evaluate, tasks.publish, tasks.verify, serving.app", ("prefect", "typer")),
    ],
)
def test_lower_floors_load_without_the_upper_floors_libraries(modules, absent):
    code = f"import sys\nimport {modules}\nprint(','.join(m for m in {absent!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"importing {modules} loaded {proc.stdout.strip()}"
