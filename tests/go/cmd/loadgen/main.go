// loadgen: the shop's customers. Sends N GET /buy?item=i to the frontend, each in a new trace
// (a root span, then otelhttp's client span), C at a time, and prints
// "sent N failed F sampled S" (S: traces the sampler kept). With -trace-ids it writes each
// request's trace id and whether it was sampled, one "TRACEID 0|1" line per request.
//
//	loadgen -target URL [-n 100] [-concurrency 4] [-trace-ids FILE]
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"tracegap.dev/shop/internal/shop"
)

func main() {
	target := flag.String("target", "", "frontend base URL")
	n := flag.Int("n", 100, "requests to send")
	concurrency := flag.Int("concurrency", 4, "requests in flight at once")
	traceIDs := flag.String("trace-ids", "", "write each request's trace id and sampled flag here")
	flag.Parse()
	shop.Main("loadgen", func(ctx context.Context, t *shop.Telemetry, faults *shop.Faults) error {
		if *target == "" || *n < 0 || *concurrency < 1 {
			return fmt.Errorf("-target is required, -n ≥ 0, -concurrency ≥ 1")
		}
		clients, err := shop.NewClients(t, faults, "")
		if err != nil {
			return err
		}
		ids := make([]string, *n)
		var failed, sampled atomic.Int64
		var firstErr sync.Once
		var errMsg string
		next := make(chan int)
		var wg sync.WaitGroup
		for w := 0; w < *concurrency; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					spanCtx, span := t.Tracer.Start(ctx, "buy")
					sc := span.SpanContext()
					if sc.IsSampled() {
						sampled.Add(1)
						ids[i] = sc.TraceID().String() + " 1"
					} else {
						ids[i] = sc.TraceID().String() + " 0"
					}
					err := clients.Do(spanCtx, "GET", *target+"/buy?item="+strconv.Itoa(i))
					span.End()
					if err != nil {
						failed.Add(1)
						firstErr.Do(func() { errMsg = err.Error() })
					}
				}
			}()
		}
	send:
		for i := 0; i < *n; i++ {
			select {
			case next <- i:
			case <-ctx.Done():
				break send
			}
		}
		close(next)
		wg.Wait()
		fmt.Printf("sent %d failed %d sampled %d\n", *n, failed.Load(), sampled.Load())
		if *traceIDs != "" {
			if err := writeLines(*traceIDs, ids); err != nil {
				return err
			}
		}
		if failed.Load() > 0 {
			return fmt.Errorf("%d requests failed, the first: %s", failed.Load(), errMsg)
		}
		return nil
	})
}

func writeLines(path string, lines []string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
