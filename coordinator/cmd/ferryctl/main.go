// Command ferryctl is the operator's command line for Ferry: it drives every
// call of the ferry.v1 API against a coordinator cluster, following the
// leader from any address it is given.
//
//	ferryctl --server 127.0.0.1:7443 --tls-dir ./ferry-data/tls server list
//
// See "ferryctl --help" and the help of each command.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Execute(ctx, os.Args[1:], IO{
		In:         os.Stdin,
		Out:        os.Stdout,
		Err:        os.Stderr,
		Getenv:     os.Getenv,
		Terminal:   term.IsTerminal(int(os.Stdout.Fd())),
		InTerminal: term.IsTerminal(int(os.Stdin.Fd())),
	})
	stop()
	os.Exit(code)
}
