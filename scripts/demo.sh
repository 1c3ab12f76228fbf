#!/usr/bin/env bash
# make demo: a one-node coordinator and an agent on this machine, driven by
# ferryctl. Filled in once the binaries exist.
set -euo pipefail
echo "make demo is not wired up yet: it arrives with the coordinator and agent binaries." >&2
echo "Until then see README.md, \"Run a one-node coordinator\"." >&2
exit 1
