#!/usr/bin/env bash
# The Layout sections of docs/development.md and README.md name every
# package `go list ./...` finds (generated pkg/pb/ aside): docs/development.md
# by its path, the README by its directory name under its parent's line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { awk '/^## Layout/{f=1; next} f && /^## /{exit} f' "$1"; }
mod=$(go list -m)
dev=$(section docs/development.md)
readme=$(section README.md)
bad=0
for p in $(go list ./... | sed "s#^$mod/##" | grep -v '^pkg/pb/'); do
	if ! grep -qF -- "$p/" <<<"$dev"; then
		echo "check-layout: docs/development.md's Layout does not name $p/" >&2
		bad=1
	fi
	# The README names a package by its path or a tail of it (source/kvm/).
	found=0 tail=$p
	while :; do
		if grep -qE -- "(^|[ {,])${tail//./\\.}/" <<<"$readme"; then
			found=1
			break
		fi
		[[ $tail == */* ]] || break
		tail=${tail#*/}
	done
	if ((!found)); then
		echo "check-layout: README.md's Layout does not name $p/" >&2
		bad=1
	fi
done
if ((bad)); then
	exit 1
fi
echo "check-layout: the Layout sections name every package"
