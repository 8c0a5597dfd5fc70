#!/usr/bin/env bash
# Review what the training flow reported when it released `training_finished`: fail the build
# loudly when training failed; otherwise annotate it with the metrics, the W&B runs, the artifacts and
# the comparison with the champion, for the people who press "Deploy?".
set -euo pipefail

get() {
  buildkite-agent meta-data get "$1" || {
    echo "meta-data '$1' is missing: training_finished must be unblocked by the training flow (ml-bot)" >&2
    return 1
  }
}

model_id="$(get model-id)"
status="$(get training-status)"
metrics="$(get metrics)"
artifacts="$(get model-data-path)"
wandb_run="$(get wandb-run-id)"

echo "--- :clipboard: ${model_id}: training ${status}"
printf 'artifacts: %s\nW&B run: %s\nmetrics: %s\n' "$artifacts" "$wandb_run" "$metrics"

if [[ "$status" != "passed" ]]; then
  echo "^^^ +++"
  echo "Training of ${model_id} did not pass (training-status=${status}): ${metrics}" >&2
  printf '**Review: training of `%s` did not pass** (`training-status=%s`), so there is nothing to deploy.\n\n%s\n\nSee the *trainkite-training* annotation for the flow run and the step that failed.\n' \
    "$model_id" "$status" "$metrics" | buildkite-agent annotate --style error --context trainkite-review
  exit 1
fi

# Champion against challenger: both confusion matrices uploaded as build artifacts and embedded in the
# annotation; a significantly worse model fails here unless the build sets TRAINKITE_ALLOW_WORSE=1.
exec trainkite review
