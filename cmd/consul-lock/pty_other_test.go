//go:build !linux

package main

import (
	"os"
	"testing"
)

// openPTY is for Linux only: elsewhere the tests that need one are skipped.
func openPTY(t *testing.T) (master, term *os.File) {
	t.Skip("pseudo-terminal tests run on Linux only")
	return nil, nil
}
