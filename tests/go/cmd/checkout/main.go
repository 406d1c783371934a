// checkout: POST /checkout?item=N reserves the item at inventory (HTTP, or HTTPS with -ca)
// then charges it at payment (gRPC).
//
//	checkout -inventory URL -payment HOST:PORT [-listen 127.0.0.1:0] [-ca FILE]
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
	inventory := flag.String("inventory", "", "inventory base URL (http:// or https://)")
	payment := flag.String("payment", "", "payment gRPC address (host:port)")
	ca := flag.String("ca", "", "trust this certificate (PEM) for HTTPS to inventory")
	flag.Parse()
	shop.Main("checkout", func(ctx context.Context, t *shop.Telemetry, faults *shop.Faults) error {
		if *inventory == "" || *payment == "" {
			return fmt.Errorf("-inventory and -payment are required")
		}
		clients, err := shop.NewClients(t, faults, *ca)
		if err != nil {
			return err
		}
		pay := shop.NewPaymentClient(*payment, t, faults)
		defer pay.Close()
		ln, err := shop.Listen(*listen)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.HandleFunc("POST /checkout", func(w http.ResponseWriter, r *http.Request) {
			item := r.URL.Query().Get("item")
			reserve := *inventory + "/reserve?item=" + url.QueryEscape(item)
			err := shop.CallDetached(r.Context(), faults, "inventory",
				func(ctx context.Context) error { return clients.Do(ctx, "GET", reserve) })
			if err == nil {
				err = pay.Charge(r.Context(), item)
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			fmt.Fprintf(w, "ordered %s\n", item)
		})
		return shop.ServeHTTP(ctx, ln, "checkout", mux, "")
	})
}
