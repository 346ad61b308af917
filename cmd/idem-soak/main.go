// Command idem-soak runs idem's whole stack against real servers for a while, with
// faults injected, and checks afterwards that every event had the fate it should have:
// applied exactly once, or dead-lettered exactly once, never both, never lost. See
// docs/reliability.md for what it does and the figures it gave.
//
//	idem-soak --seed 42 --events 100000 --legs sql,rabbitmq,nats,redis
package main

import (
	"context"
	"os"

	"github.com/idemkit/idem/cmd/idem-soak/internal/soak"
)

func main() { os.Exit(soak.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr)) }
