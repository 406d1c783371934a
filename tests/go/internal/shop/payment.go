package shop

import (
	"context"
	"fmt"
	"net"
	"sync"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// PaymentMethod is the one gRPC method of the shop: /shop.Payment/Charge, a StringValue (the
// item) in and out. The service is described by hand (no protoc): the well-known wrapper
// messages are all it needs.
const PaymentMethod = "/shop.Payment/Charge"

// ChargeFunc handles one Charge call.
type ChargeFunc func(ctx context.Context, item string) (string, error)

// ServePayment serves the Payment service on `ln` (h2c, loopback) with otelgrpc's server
// handler until ctx ends.
func ServePayment(ctx context.Context, ln net.Listener, charge ChargeFunc) error {
	srv := grpc.NewServer(grpc.StatsHandler(otelgrpc.NewServerHandler()))
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "shop.Payment",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Charge",
			Handler: func(_ any, ctx context.Context, dec func(any) error,
				interceptor grpc.UnaryServerInterceptor) (any, error) {
				in := new(wrapperspb.StringValue)
				if err := dec(in); err != nil {
					return nil, err
				}
				handle := func(ctx context.Context, req any) (any, error) {
					out, err := charge(ctx, req.(*wrapperspb.StringValue).GetValue())
					if err != nil {
						return nil, err
					}
					return wrapperspb.String(out), nil
				}
				if interceptor == nil {
					return handle(ctx, in)
				}
				return interceptor(ctx, in,
					&grpc.UnaryServerInfo{FullMethod: PaymentMethod}, handle)
			},
		}},
		Metadata: "shop/payment",
	}, struct{}{})
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		srv.GracefulStop()
		return nil
	}
}

// PaymentClient calls Charge. Each way of calling (with the otelgrpc handler and the global
// propagator, without the handler, with no or the B3 propagator) has its own ClientConn, made
// on first use: one HTTP/2 connection each, every call of that kind on it.
type PaymentClient struct {
	target    string
	telemetry *Telemetry
	faults    *Faults
	mu        sync.Mutex
	conns     map[string]*grpc.ClientConn
}

// NewPaymentClient makes a client for the payment service at target (host:port, loopback).
func NewPaymentClient(target string, t *Telemetry, faults *Faults) *PaymentClient {
	return &PaymentClient{target: target, telemetry: t, faults: faults,
		conns: map[string]*grpc.ClientConn{}}
}

func (p *PaymentClient) conn(kind string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[kind]; ok {
		return c, nil
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	var prop propagation.TextMapPropagator
	switch kind {
	case NoPropagator:
		prop = p.telemetry.None
	case B3Only:
		prop = p.telemetry.B3
	}
	if kind != NoGRPCHandler {
		var hopts []otelgrpc.Option
		if prop != nil {
			hopts = append(hopts, otelgrpc.WithPropagators(prop))
		}
		opts = append(opts, grpc.WithStatsHandler(otelgrpc.NewClientHandler(hopts...)))
	}
	c, err := grpc.NewClient(p.target, opts...)
	if err != nil {
		return nil, fmt.Errorf("grpc client for %s: %w", p.target, err)
	}
	p.conns[kind] = c
	return c, nil
}

// Charge calls /shop.Payment/Charge the way the per-request faults say.
func (p *PaymentClient) Charge(ctx context.Context, item string) error {
	// As in Clients.Do: every fault counts every call, the first that hit decides.
	noHandler := p.faults.Hit(NoGRPCHandler, PaymentMethod)
	noPropagator := p.faults.Hit(NoPropagator, PaymentMethod)
	b3Only := p.faults.Hit(B3Only, PaymentMethod)
	kind := "w3c"
	switch {
	case noHandler:
		kind = NoGRPCHandler
	case noPropagator:
		kind = NoPropagator
	case b3Only:
		kind = B3Only
	}
	c, err := p.conn(kind)
	if err != nil {
		return err
	}
	out := new(wrapperspb.StringValue)
	return c.Invoke(ctx, PaymentMethod, wrapperspb.String(item), out)
}

// Close closes every connection.
func (p *PaymentClient) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}
