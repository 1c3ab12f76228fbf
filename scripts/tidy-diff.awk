# make check's verdict on `go mod tidy -e -diff`, independent of which
# modules the module proxy serves and the module cache holds.
#
#   awk -v unavailable=FILE -f scripts/tidy-diff.awk DIFF
#
# FILE lists the module@version pairs that tidy could not download
# (one a line, from its errors); DIFF is its output. go.sum is committed
# complete (what a full `go mod tidy` writes when every module is served), so
# the diff may only drop the lines of an unavailable module: the test-only
# dependencies of dependencies, which nothing here builds. Any change to
# go.mod, any line go.sum lacks and any other line tidy drops fails, printed
# with the reason. Exits 1 on failure.

BEGIN { while ((getline m < unavailable) > 0) unserved[m] = 1 }
/^diff / { file = $2; next }
/^(---|\+\+\+|@@)/ { next }
!/^[-+]/ { next }
file !~ /go\.sum$/ { print "check: go.mod would change: " $0; bad = 1; next }
/^\+/ { print "check: go.sum lacks: " substr($0, 2); bad = 1; next }
{
	line = substr($0, 2)
	split(line, f, " ")
	version = f[2]
	sub(/\/go\.mod$/, "", version)
	if (!((f[1] "@" version) in unserved)) {
		print "check: go.sum holds a line tidy drops: " line
		bad = 1
	}
}
END { exit bad }
