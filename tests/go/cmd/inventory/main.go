// inventory: the shop's stock service, a leaf. GET /reserve?item=N answers "reserved".
//
//	inventory [-listen 127.0.0.1:0] [-tls-cert FILE]
//
// With -tls-cert it serves HTTPS (a self-signed certificate made at start, written to FILE).
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"

	"tracegap.dev/shop/internal/shop"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "loopback address to serve on")
	certOut := flag.String("tls-cert", "", "serve HTTPS; write the self-signed certificate here")
	flag.Parse()
	shop.Main("inventory", func(ctx context.Context, t *shop.Telemetry, _ *shop.Faults) error {
		ln, err := shop.Listen(*listen)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /reserve", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "reserved %s\n", r.URL.Query().Get("item"))
		})
		return shop.ServeHTTP(ctx, ln, "inventory", mux, *certOut)
	})
}
