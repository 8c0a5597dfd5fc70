"""Compile the bytecode of what a local run imports, once, where Python caches none.

uv installs no `.pyc` files, and where PYTHONDONTWRITEBYTECODE is set (CI images, containers) no process writes
them either: every command then compiles its imports from source again. `scripts/install.sh` runs each group below
in its own process with the variable unset; importing a module writes the bytecode of all it imports. The groups
name what a run imports only when it needs it (the fit's libraries, the plots), not just the flow's module: a demo
`trainkite train` imported about 900 modules from source without them.

    python -m cli.bytecode flow fit server     # compile these groups, in this process
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

GROUPS: dict[str, tuple[str, ...]] = {
    # The CLI, the flow and what its steps import in their bodies: the local server client, DuckDB, safetensors,
    # the champion's lookup, Prefect's engines and their async backend.
    "flow": (
        "cli.main",
        "cli.prefect_server",
        "flows.train",
        "tasks.champion",
        "tasks.compare",
        "tasks.aliases",
        "tasks.deploy_log",
        "duckdb",
        "pyarrow.pandas_compat",
        "pyarrow.vendored.version",
        "safetensors.numpy",
        "prefect.flow_engine",
        "prefect.task_engine",
        "prefect.utilities.visualization",
        "anyio._backends._asyncio",
    ),
    # The model kinds' fits and the evaluation's plots, imported only by the step that uses them.
    "fit": (
        "models.linear",
        "models.bow",
        "models.bow_native",
        "models.tokens_native",
        "sklearn.linear_model",
        "scipy.sparse",
        "threadpoolctl",
        "matplotlib.pyplot",
        "matplotlib.backends.backend_agg",
    ),
    # The Prefect server that a first local run starts.
    "server": ("prefect.server.api.server",),
}


def missing() -> list[str]:
    """The loaded modules that have no bytecode where Python would look for it."""
    names = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        # torch.ops and torch.classes name a file that is not there ("_ops.py").
        if not path or not os.path.isabs(path) or not path.endswith(".py") or name in ("__main__", "__mp_main__"):
            continue
        if not os.path.exists(importlib.util.cache_from_source(path)):
            names.append(name)
    return sorted(names)


def main(argv: list[str]) -> int:
    unknown = [g for g in argv if g not in GROUPS]
    if not argv or unknown:
        print(f"usage: python -m cli.bytecode {'|'.join(GROUPS)} (unknown: {unknown})", file=sys.stderr)
        return 2
    for group in argv:
        for name in GROUPS[group]:
            importlib.import_module(name)
    if "numba" in sys.modules:
        # numba imports its type and lowering registries (some 200 modules) when a run first calls a compiled loop.
        from numba.core.registry import cpu_target

        cpu_target.target_context.refresh()
        cpu_target.typing_context.refresh()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
