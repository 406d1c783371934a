// tlsoffsets prints, for the Go that builds it, the field offsets the agent's Go TLS probes
// walk from a *tls.Conn to the socket: tls.Conn.conn (a net.Conn interface: its data word is
// the *net.TCPConn), net.TCPConn.conn.fd (*net.netFD), netFD.pfd (poll.FD), poll.FD.Sysfd.
// Read with reflect, not assumed, so a new Go version shows what changed. One JSON object.
package main

import (
	"crypto/tls"
	"encoding/json"
	"net"
	"os"
	"reflect"
	"runtime"
	"unsafe"
)

func field(t reflect.Type, name string) reflect.StructField {
	f, ok := t.FieldByName(name)
	if !ok {
		panic(t.String() + " has no field " + name)
	}
	return f
}

func main() {
	connField := field(reflect.TypeOf(tls.Conn{}), "conn")
	tcpConn := reflect.TypeOf(net.TCPConn{})
	inner := field(tcpConn, "conn")          // net.conn, embedded
	fdField := field(inner.Type, "fd")       // *net.netFD
	pfd := field(fdField.Type.Elem(), "pfd") // poll.FD
	sysfd := field(pfd.Type, "Sysfd")
	var iface net.Conn
	out := map[string]any{
		"go":                 runtime.Version(),
		"tls_conn_conn":      connField.Offset,
		"tls_conn_conn_type": connField.Type.String(),
		"iface_data_word":    unsafe.Sizeof(uintptr(0)), // (itab, data): data is the second word
		"iface_size":         unsafe.Sizeof(iface),
		"tcpconn_conn":       inner.Offset,
		"conn_fd":            fdField.Offset,
		"netfd_pfd":          pfd.Offset,
		"pollfd_sysfd":       sysfd.Offset,
		"pollfd_sysfd_type":  sysfd.Type.String(),
		"netfd_to_sysfd":     pfd.Offset + sysfd.Offset,
	}
	enc := json.NewEncoder(os.Stdout)
	enc.Encode(out)
}
