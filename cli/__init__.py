"""Entry points: the `trainkite` CLI, the Buildkite launcher, the local Prefect server. Nothing imports them."""
