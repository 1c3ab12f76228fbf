package nbd_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// Copy only the data of an export: ask for its extents, read what is
// neither a hole nor zeroes.
func ExampleClient_Extents() {
	ctx := context.Background()
	c, err := nbd.Dial(ctx, "unix", "/run/vm/vda.sock", nbd.Options{ExportName: "vda", Logger: slog.Default()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	exts, err := c.Extents(ctx, 0, c.Size())
	if err != nil {
		fmt.Println(err)
		return
	}
	buf := make([]byte, 2<<20)
	for _, e := range exts {
		if e.Zero() {
			continue // never sent
		}
		for off := e.Offset; off < e.End(); off += int64(len(buf)) {
			p := buf[:min(int64(len(buf)), e.End()-off)]
			if err := c.ReadAt(ctx, p, off); err != nil {
				fmt.Println(err)
				return
			}
			// write p at off into the target
		}
	}
}
