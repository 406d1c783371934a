// sdkclient: a client service on the OpenTelemetry Go SDK. It builds a TracerProvider (OTLP
// exporter from the standard OTEL_EXPORTER_OTLP_* variables, batch processor), registers the
// W3C propagator, and calls TARGET N times through an otelhttp transport, each call in a new
// context (a client that starts traces). Then it stays up, as a service does, until SIGINT or
// SIGTERM, and flushes.
//
// With -wired it also calls otel.SetTracerProvider(tp): its calls carry traceparent and their
// client spans are exported. Without it the provider is built and never registered (the seed's
// silent SDK): otelhttp asks the global provider, which stays the no-op, so the calls carry no
// context and nothing is ever exported, although the SDK and the exporter are linked.
//
//	sdkclient -target URL [-n 5] [-wired]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func main() {
	target := flag.String("target", "", "URL to GET")
	n := flag.Int("n", 5, "requests to send")
	wired := flag.Bool("wired", false, "register the tracer provider globally")
	flag.Parse()
	if *target == "" || *n < 0 {
		fail(fmt.Errorf("-target is required, -n ≥ 0"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	exporter, err := otlptracehttp.New(ctx)
	if err != nil {
		fail(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter))
	if *wired {
		otel.SetTracerProvider(tp)
	}
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(
		propagation.TraceContext{}, propagation.Baggage{}))
	client := &http.Client{Transport: otelhttp.NewTransport(http.DefaultTransport),
		Timeout: 10 * time.Second}

	for i := 0; i < *n; i++ {
		if err := get(ctx, client, *target); err != nil {
			fail(err)
		}
	}
	fmt.Printf("sent %d\n", *n)
	<-ctx.Done()
	flush, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tp.Shutdown(flush); err != nil {
		fail(fmt.Errorf("tracer provider shutdown: %w", err))
	}
}

func get(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "sdkclient:", err)
	os.Exit(1)
}
