// Package shop is what the shop's services share: the fault switches, OpenTelemetry set-up,
// HTTP clients and servers (loopback only, optional TLS with a certificate made at start), and
// the payment gRPC service.
package shop

import (
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// The seed faults. All off means correctly instrumented.
const (
	// The HTTP client has no otelhttp transport: no client span, no traceparent.
	NoTransport = "no-transport"
	// otel.SetTextMapPropagator is never called: Inject writes nothing, Extract finds nothing.
	NoPropagator = "no-propagator"
	// The gRPC client has no otelgrpc stats handler.
	NoGRPCHandler = "no-grpc-handler"
	// The handler calls downstream from a goroutine with context.Background().
	BackgroundContext = "background-context"
	// The client span whose id goes on the wire is never End()ed, so never exported.
	UnendedSpan = "unended-span"
	// SimpleSpanProcessor (sdktrace.WithSyncer): one export request per span.
	SyncExport = "sync-export"
	// Only the B3 propagator is registered.
	B3Only = "b3-only"
	// ParentBased(TraceIDRatioBased(0.01)): 99% of new traces are not sampled.
	Sample1Pct = "sample-1pct"
)

var known = []string{
	NoTransport, NoPropagator, NoGRPCHandler, BackgroundContext, UnendedSpan, SyncExport,
	B3Only, Sample1Pct,
}

// Faults holds the switches of one process (SHOP_FAULTS, a comma-separated list) and the share
// of requests the per-request faults apply to (SHOP_FAULT_FRACTION, 0..1, default 1).
type Faults struct {
	on       map[string]bool
	fraction float64
	counters sync.Map // fault + "|" + call site → *atomic.Uint64
}

// FaultsFromEnv reads SHOP_FAULTS and SHOP_FAULT_FRACTION.
func FaultsFromEnv() (*Faults, error) {
	f := &Faults{on: map[string]bool{}, fraction: 1}
	for _, name := range strings.Split(os.Getenv("SHOP_FAULTS"), ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !contains(known, name) {
			return nil, fmt.Errorf("SHOP_FAULTS: unknown fault %q (known: %s)", name,
				strings.Join(known, ", "))
		}
		f.on[name] = true
	}
	if s := os.Getenv("SHOP_FAULT_FRACTION"); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v < 0 || v > 1 {
			return nil, fmt.Errorf("SHOP_FAULT_FRACTION: %q is not a number in [0, 1]", s)
		}
		f.fraction = v
	}
	return f, nil
}

// On says whether a process-wide fault is switched on.
func (f *Faults) On(name string) bool { return f.on[name] }

// Everywhere says whether a fault applies to every request (switched on, fraction 1).
func (f *Faults) Everywhere(name string) bool { return f.on[name] && f.fraction >= 1 }

// Hit says whether a per-request fault applies to this request at this call site (each
// downstream call of a handler is a site): the n-th request of a site is faulty when
// floor(n·fraction) grows, so exactly that share is, evenly spread.
func (f *Faults) Hit(name, site string) bool {
	if !f.on[name] {
		return false
	}
	c, _ := f.counters.LoadOrStore(name+"|"+site, new(atomic.Uint64))
	n := c.(*atomic.Uint64).Add(1)
	return math.Floor(float64(n)*f.fraction) > math.Floor(float64(n-1)*f.fraction)
}

// String lists the faults switched on, for the start-up line.
func (f *Faults) String() string {
	var names []string
	for name := range f.on {
		names = append(names, name)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return "none"
	}
	return fmt.Sprintf("%s (fraction %g)", strings.Join(names, ","), f.fraction)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
