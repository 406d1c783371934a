package shop

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Main runs one shop process: faults from the environment, telemetry, then `run` until it
// returns or SIGINT/SIGTERM arrives; spans are flushed before exit. Errors exit with status 1.
func Main(service string, run func(ctx context.Context, t *Telemetry, faults *Faults) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	faults, err := FaultsFromEnv()
	if err != nil {
		fail(service, err)
	}
	t, err := SetupTelemetry(ctx, service, faults)
	if err != nil {
		fail(service, err)
	}
	fmt.Fprintf(os.Stderr, "%s: pid %d, faults: %s\n", service, os.Getpid(), faults)
	err = run(ctx, t, faults)
	t.Shutdown()
	if err != nil {
		fail(service, err)
	}
}

func fail(service string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", service, err)
	os.Exit(1)
}
