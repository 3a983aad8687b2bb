#!/usr/bin/env bash
# Stand-in for nvidia-smi discovery on a machine without GPUs: reports one device, "0".
# YARN (yarn.io/gpu, a countable resource on the dev NodeManager) and Spark are real; only
# the device behind the address is missing, so nothing may touch it.
printf '{"name": "gpu", "addresses": ["0"]}\n'
