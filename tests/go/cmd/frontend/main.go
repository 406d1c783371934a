// frontend: GET /buy?item=N places the order at checkout (HTTP).
//
//	frontend -checkout URL [-listen 127.0.0.1:0]
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/url"

	"tracegap.dev/shop/internal/shop"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "loopback address to serve on")
	checkout := flag.String("checkout", "", "checkout base URL")
	flag.Parse()
	shop.Main("frontend", func(ctx context.Context, t *shop.Telemetry, faults *shop.Faults) error {
		if *checkout == "" {
			return fmt.Errorf("-checkout is required")
		}
		clients, err := shop.NewClients(t, faults, "")
		if err != nil {
			return err
		}
		ln, err := shop.Listen(*listen)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /buy", func(w http.ResponseWriter, r *http.Request) {
			order := *checkout + "/checkout?item=" + url.QueryEscape(r.URL.Query().Get("item"))
			err := shop.CallDetached(r.Context(), faults, "checkout",
				func(ctx context.Context) error { return clients.Do(ctx, "POST", order) })
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			fmt.Fprintln(w, "thank you")
		})
		return shop.ServeHTTP(ctx, ln, "frontend", mux, "")
	})
}
