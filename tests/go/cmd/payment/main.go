// payment: the shop's payment service, a leaf, over gRPC (grpc-go, h2c on loopback):
// /shop.Payment/Charge.
//
//	payment [-listen 127.0.0.1:0]
package main

import (
	"context"
	"flag"

	"tracegap.dev/shop/internal/shop"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "loopback address to serve on")
	flag.Parse()
	shop.Main("payment", func(ctx context.Context, _ *shop.Telemetry, _ *shop.Faults) error {
		ln, err := shop.Listen(*listen)
		if err != nil {
			return err
		}
		return shop.ServePayment(ctx, ln, func(_ context.Context, item string) (string, error) {
			return "charged " + item, nil
		})
	})
}
