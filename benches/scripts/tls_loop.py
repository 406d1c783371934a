"""TLS cost loop for `cargo xtask bench`: a client and a server `ssl.SSLObject` in one process,
joined by memory BIOs, so every iteration is exactly one SSL_write_ex and one SSL_read_ex in the
host's libssl (the functions tracegap probes) and no socket syscall.

    tls_loop.py --kind tls-http|tls-other --count N [--burst B --pause-ms P]

tls-http writes a 64-byte HTTP request (captured twice: client write, server read); tls-other
64 bytes that are not one (probes run, nothing is captured). Prints {"ns_per_call": ...}: the
time per write+read pair, pauses excluded.
"""

import argparse
import json
import os
import ssl
import subprocess
import tempfile
import time

HTTP = b"GET /bench HTTP/1.1\r\nHost: bench\r\nX-Pad: " + b"p" * 20 + b"\r\n\r\n"
OTHER = b"\x00\x01binary-not-http" + b"q" * (len(HTTP) - 17)


def pair():
    tmp = tempfile.mkdtemp(prefix="tracegap-tls-bench-")
    key, cert = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=bench", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for end in (client, server):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    client.do_handshake()
    server.do_handshake()
    return client, server, c_out, s_in


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kind", choices=["tls-http", "tls-other"], required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--burst", type=int, default=0)
    p.add_argument("--pause-ms", type=int, default=0)
    a = p.parse_args()
    payload = HTTP if a.kind == "tls-http" else OTHER
    client, server, c_out, s_in = pair()
    total = 0
    done = 0
    burst = a.burst or a.count
    while done < a.count:
        n = min(burst, a.count - done)
        t = time.perf_counter_ns()
        for _ in range(n):
            client.write(payload)
            s_in.write(c_out.read())
            server.read(256)
        total += time.perf_counter_ns() - t
        done += n
        if a.pause_ms and done < a.count:
            time.sleep(a.pause_ms / 1000)
    print(json.dumps({"ns_per_call": total / a.count, "count": a.count}))


if __name__ == "__main__":
    main()
