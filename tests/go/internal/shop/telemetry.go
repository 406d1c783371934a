package shop

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Telemetry is a process's tracer provider and the propagators its clients may use.
type Telemetry struct {
	Provider *sdktrace.TracerProvider
	Tracer   trace.Tracer
	// W3C is what a correctly set-up process registers: tracecontext and baggage.
	W3C propagation.TextMapPropagator
	// None is what the otel package hands out when nothing was registered.
	None propagation.TextMapPropagator
	// B3 is the B3 propagator alone (multi-header encoding, X-B3-*).
	B3 propagation.TextMapPropagator
}

// SetupTelemetry builds the tracer provider from the standard OTEL_* variables:
// OTEL_SERVICE_NAME (else `service`), OTEL_EXPORTER_OTLP_ENDPOINT (read by the exporters),
// OTEL_EXPORTER_OTLP_PROTOCOL (`grpc` or `http/protobuf`, the default), OTEL_BSP_* (read by
// the batch processor). The faults choose the processor, the sampler and the global
// propagator.
func SetupTelemetry(ctx context.Context, service string, faults *Faults) (*Telemetry, error) {
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", service)),
		// After the default name: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win.
		resource.WithFromEnv(),
		resource.WithTelemetrySDK(),
		resource.WithProcessPID(),
		resource.WithProcessExecutableName(),
	)
	if err != nil {
		return nil, fmt.Errorf("resource: %w", err)
	}
	exporter, err := newExporter(ctx)
	if err != nil {
		return nil, err
	}
	processor := sdktrace.WithBatcher(exporter)
	if faults.On(SyncExport) {
		processor = sdktrace.WithSyncer(exporter)
	}
	sampler := sdktrace.ParentBased(sdktrace.AlwaysSample())
	if faults.On(Sample1Pct) {
		sampler = sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.01))
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res), processor, sdktrace.WithSampler(sampler))
	otel.SetTracerProvider(tp)

	t := &Telemetry{
		Provider: tp,
		Tracer:   tp.Tracer("tracegap.dev/shop"),
		W3C: propagation.NewCompositeTextMapPropagator(
			propagation.TraceContext{}, propagation.Baggage{}),
		None: propagation.NewCompositeTextMapPropagator(),
		B3:   b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader)),
	}
	switch {
	case faults.Everywhere(NoPropagator):
		// The fault itself: nothing registered, otel's default no-op propagator stays.
	case faults.Everywhere(B3Only):
		otel.SetTextMapPropagator(t.B3)
	default:
		otel.SetTextMapPropagator(t.W3C)
	}
	return t, nil
}

func newExporter(ctx context.Context) (sdktrace.SpanExporter, error) {
	protocol := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch protocol {
	case "", "http/protobuf":
		return otlptracehttp.New(ctx)
	case "grpc":
		return otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: the shop speaks grpc or http/protobuf", protocol)
	}
}

// Shutdown flushes and stops the tracer provider (bounded).
func (t *Telemetry) Shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := t.Provider.Shutdown(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "tracer provider shutdown:", err)
	}
}
