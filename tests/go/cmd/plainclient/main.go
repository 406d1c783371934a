// plainclient: a client with no OpenTelemetry module at all (net/http only). It calls TARGET N
// times, prints "sent N", and stays up until SIGINT or SIGTERM, as sdkclient does.
//
//	plainclient -target URL [-n 5]
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
)

func main() {
	target := flag.String("target", "", "URL to GET")
	n := flag.Int("n", 5, "requests to send")
	flag.Parse()
	if *target == "" || *n < 0 {
		fail(fmt.Errorf("-target is required, -n ≥ 0"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	client := &http.Client{Timeout: 10 * time.Second}
	for i := 0; i < *n; i++ {
		req, err := http.NewRequestWithContext(ctx, "GET", *target, nil)
		if err != nil {
			fail(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			fail(err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			fail(err)
		}
	}
	fmt.Printf("sent %d\n", *n)
	<-ctx.Done()
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "plainclient:", err)
	os.Exit(1)
}
