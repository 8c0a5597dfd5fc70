"""trainkite: the shared contracts (artifact store, manifest, model ID) and the CLI."""

__version__ = "0.1.0"
