#!/usr/bin/env bash
# Deploy the model this build trained, after a member of ml-approvers pressed "Deploy?".
# `trainkite deploy` verifies the artifact hashes and refuses a model older than the live one.
set -euo pipefail

model_id="$(buildkite-agent meta-data get model-id)"
status="$(buildkite-agent meta-data get training-status)"
if [[ "$status" != "passed" ]]; then
  echo "refusing to deploy ${model_id}: training-status=${status}" >&2
  exit 1
fi

echo "--- :rocket: deploying ${model_id} (approved by ${BUILDKITE_UNBLOCKER:-?})"
# TRAINKITE_DEPLOY_TARGET exists for local runs of this pipeline; production is sagemaker.
exec trainkite deploy "$model_id" --target "${TRAINKITE_DEPLOY_TARGET:-sagemaker}" \
  --approved-by "${BUILDKITE_UNBLOCKER:?the deploy step must follow the Deploy? block step}"
