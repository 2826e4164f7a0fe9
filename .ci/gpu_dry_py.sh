#!/usr/bin/env bash
# The dry run's stand-in for python (.ci/gpu_session.sh with GPU_DRY_RUN=1): it
# records the command line, with the step that ran it and the folder it ran in,
# for .ci/gpu_dry.py, which runs every recorded command in one Python process
# (one import of torch instead of one per command: the dry run stays within CI's minute).
set -eu
plan=${GPU_SESSION_WORK:?}/plan
mkdir -p "$plan"
f=$(mktemp "$plan/$(date +%s%N).XXXXXX")
{ printf '%s\0' "${GPU_STEP:-?}" "$PWD"; printf '%s\0' "$@"; } > "$f"
