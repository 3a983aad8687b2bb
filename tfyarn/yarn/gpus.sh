#!/usr/bin/env bash
# Spark GPU discovery script for YARN containers (spark.executor.resource.gpu.discoveryScript).
# Prints the GPUs this container may use as Spark's ResourceInformation JSON. With YARN's
# GPU isolation (yarn.io/gpu, cgroups or Docker) nvidia-smi inside the container lists only
# the devices YARN assigned to it. No nvidia-smi: no GPUs, and Spark then refuses to start
# an executor that asked for some, with a message naming the resource.
set -euo pipefail
addresses=""
if command -v nvidia-smi >/dev/null 2>&1; then
  addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null \
    | sed -e 's/[^0-9]//g' -e '/^$/d' -e 's/.*/"&"/' | paste -sd, -)
fi
printf '{"name": "gpu", "addresses": [%s]}\n' "$addresses"
