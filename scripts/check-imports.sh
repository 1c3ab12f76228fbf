#!/usr/bin/env bash
# The import boundaries of docs/development.md's Layout, checked on the
# transitive dependencies of every package (go list -deps, tests left out):
#   - coordinator/ and agent/ never import each other;
#   - ferryctl imports only pkg/ of this module;
#   - no production package imports a test-helper package (a path element
#     containing "test", or agent/e2e).
# Exits 1 naming each violation and the dependency that makes it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mod=$(go list -m)
bad=0
while read -r pkg deps; do
	rel=${pkg#"$mod"/}
	for dep in $deps; do
		[[ $dep == "$mod"/* ]] || continue
		d=${dep#"$mod"/}
		why=""
		case $rel in
		coordinator/cmd/ferryctl*) [[ $d == pkg/* ]] || why="ferryctl imports only pkg/" ;;
		coordinator/*) [[ $d == agent/* ]] && why="the coordinator never imports the agent" ;;
		agent/*) [[ $d == coordinator/* ]] && why="the agent never imports the coordinator" ;;
		esac
		if [[ -z $why && ! $rel =~ (^|/)[^/]*test[^/]*(/|$) && $rel != agent/e2e* ]]; then
			if [[ $d =~ (^|/)[^/]*test[^/]*(/|$) || $d == agent/e2e* ]]; then
				why="production code never imports test helpers"
			fi
		fi
		if [[ -n $why ]]; then
			echo "check-imports: $rel imports $d: $why" >&2
			bad=1
		fi
	done
done < <(go list -e -f '{{.ImportPath}} {{join .Deps " "}}' ./...)
if ((bad)); then
	exit 1
fi
echo "check-imports: boundaries hold"
