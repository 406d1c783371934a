package shop

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Listen binds a loopback address only (refusing any other), port 0 or given, and prints
// "listening PORT" on stdout (the tests and the demo read it).
func Listen(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("-listen %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("-listen %q: the shop binds loopback addresses only", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	fmt.Printf("listening %d\n", ln.Addr().(*net.TCPAddr).Port)
	return ln, nil
}

// ServeHTTP serves `handler` (wrapped in otelhttp's server handler) on `ln` until ctx ends.
// With certOut set it serves HTTPS (HTTP/2 by ALPN, Go's default) with a self-signed
// certificate for 127.0.0.1 made now, written (public part) to certOut for the clients to trust.
func ServeHTTP(ctx context.Context, ln net.Listener, service string, handler http.Handler,
	certOut string) error {
	srv := &http.Server{
		Handler:           otelhttp.NewHandler(handler, service),
		ReadHeaderTimeout: 10 * time.Second,
	}
	if certOut != "" {
		cert, err := selfSigned(certOut)
		if err != nil {
			return err
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	errc := make(chan error, 1)
	go func() {
		if certOut != "" {
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shutdown)
	}
}

// selfSigned makes an ECDSA P-256 certificate for 127.0.0.1 valid for a day and writes its PEM.
func selfSigned(certOut string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(certOut, pemBytes, 0o644); err != nil {
		return tls.Certificate{}, fmt.Errorf("writing the certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// Clients are one caller's HTTP clients: the instrumented one and those the per-request faults
// use instead. All share one base transport (so one connection pool).
type Clients struct {
	telemetry *Telemetry
	faults    *Faults
	base      *http.Transport
	w3c       *http.Client
	none      *http.Client
	b3        *http.Client
	bare      *http.Client
}

// NewClients builds the clients; with caFile set, the base transport trusts that certificate
// (the HTTPS switch; Go then speaks HTTP/2 by ALPN).
func NewClients(t *Telemetry, faults *Faults, caFile string) (*Clients, error) {
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.MaxIdleConnsPerHost = 64
	if caFile != "" {
		pemBytes, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("-ca %s: no PEM certificate", caFile)
		}
		base.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	instrumented := func(p propagation.TextMapPropagator) *http.Client {
		opts := []otelhttp.Option{}
		if p != nil {
			opts = append(opts, otelhttp.WithPropagators(p))
		}
		return &http.Client{Transport: otelhttp.NewTransport(base, opts...), Timeout: 10 * time.Second}
	}
	return &Clients{
		telemetry: t,
		faults:    faults,
		base:      base,
		w3c:       instrumented(nil),
		none:      instrumented(t.None),
		b3:        instrumented(t.B3),
		bare:      &http.Client{Transport: base, Timeout: 10 * time.Second},
	}, nil
}

// Do sends one request the way this process is set up to: the first per-request fault that hit
// decides how (no otelhttp transport, no propagator, B3 only, a client span never ended), else
// through otelhttp with the global propagator. The response body is read and closed.
func (c *Clients) Do(ctx context.Context, method, url string) error {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return err
	}
	site := method + " " + req.URL.Host + req.URL.Path
	// Every fault counts every request of the site (each hits its own share), then the first
	// that hit decides.
	noTransport := c.faults.Hit(NoTransport, site)
	noPropagator := c.faults.Hit(NoPropagator, site)
	b3Only := c.faults.Hit(B3Only, site)
	unended := c.faults.Hit(UnendedSpan, site)
	var client *http.Client
	switch {
	case noTransport:
		client = c.bare
	case noPropagator:
		client = c.none
	case b3Only:
		client = c.b3
	case unended:
		// A hand-made client span, injected, and never ended: its id goes on the wire and
		// the span is never exported.
		spanCtx, _ := c.telemetry.Tracer.Start(ctx, method+" "+req.URL.Path,
			trace.WithSpanKind(trace.SpanKindClient))
		req = req.WithContext(spanCtx)
		otel.GetTextMapPropagator().Inject(spanCtx, propagation.HeaderCarrier(req.Header))
		client = c.bare
	default:
		client = c.w3c
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: status %d", method, url, resp.StatusCode)
	}
	return nil
}

// CallDetached runs `call` the way the background-context fault says: for its share of
// requests in a goroutine with context.Background() (the handler still waits for it), else
// with the handler's context.
func CallDetached(ctx context.Context, faults *Faults, site string,
	call func(context.Context) error) error {
	if !faults.Hit(BackgroundContext, site) {
		return call(ctx)
	}
	done := make(chan error, 1)
	go func() { done <- call(context.Background()) }()
	return <-done
}
