#!/usr/bin/env bash
# Review what the training flow reported when it released `training_finished`: fail the build
# loudly when training failed; otherwise annotate it with the metrics, the W&B run and the
# artifacts, for the people who press "Deploy?".
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

if [[ "$wandb_run" == "none" ]]; then
  wandb="tracking was off"
elif [[ -n "${WANDB_ENTITY:-}" ]]; then
  wandb="[${wandb_run}](${WANDB_BASE_URL_APP:-https://wandb.ai}/${WANDB_ENTITY}/${WANDB_PROJECT:-trainkite}/runs/${wandb_run})"
else
  wandb="offline run ID \`${wandb_run}\` (\`wandb sync\` it to see it online)"
fi

rows=""
read -r -a pairs <<<"$metrics"
for pair in "${pairs[@]}"; do
  rows+="| ${pair%%=*} | ${pair#*=} |"$'\n'
done

{
  printf '### Review: model `%s`\n\n' "$model_id"
  printf '| metric | value |\n|---|---|\n%s\n' "$rows"
  printf -- '- W&B: %s\n- artifacts: `%s`\n\nPress **Deploy?** to put it live.\n' "$wandb" "$artifacts"
} | buildkite-agent annotate --style success --context trainkite-review
