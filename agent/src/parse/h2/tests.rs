//! The decoder on recorded and generated connections: every split point, truncation, joining
//! late, garbage.

use super::{
    frame::{DATA, FLAG_PADDED},
    *,
};

// Regenerate: `python3 tests/fixtures/h2/gen_vectors.py` (h2 4.4.1, hpack 4.2.0, hyperframe 6.1.0); the
// grpcio vectors are client->server bytes of grpc_app.py recorded through a TCP relay.
/// python h2 4.4.1 client: 3 POSTs with Huffman and dynamic table reuse.
const H2_CLIENT: &str = concat!(
    "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a00002a040000000000000100001000000200000001000400",
    "00ffff0005000040000008000000000003000000640006000100000000990104000000018386449b6242d275f15852a4",
    "b631b87eb1968a0ffe24fd4b541bb05edb837f41909ac29525b1735492d950e8b8d800d87f5f8b1d75d0620d263d4c4d",
    "65644082497f864d833505b11f40884d83216b1d85a93fa700166a395f14acb6ebb1b2d483706c90af89f9005015a759",
    "7160025038e8c608c6f8051bab003f1f088bba51d85b14dd82f6dc1bff408a9acac8b26c190ab466ab8386186100000a",
    "000100000001000000000568656c6c6f00005c010400000003838644906242d275f15852a4b631b87eb1968a0fc3c2c1",
    "7f01a700166a395f14acb6ebb1b2d483706c90af89f9005015a7597168dd1c8e46e85c7c40659642b0031f088bba51d8",
    "5b14dd82f6dc1bff40874d83215091a4bf83eb077f00000a000100000003000000000568656c6c6f00003f0104000000",
    "058386c0c5c4c37f00a7001600e575c6c2f85c248d33248f34d3c58c41091e03217c8b46f91d23ef3f2beebe178acac0",
    "0f1f088bba51d85b14dd82f6dc1bffbf00000a000100000005000000000568656c6c6f",
);
/// hpack 4.2.0 + hyperframe 6.1.0: PADDED|PRIORITY + CONTINUATION, trailers, size update.
const CONTINUATION_CONN: &str = concat!(
    "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a00000c040000000000000100001000000200000000000021",
    "01280000000107000000000f83864488606c47ff52d839bf41909ac29525b1730000000000000000001e090000000001",
    "5492d950e8b8d800d87f5f8b1d75d0620d263d4c4d65644082497f864d8300006a0904000000013505b11f40884d8321",
    "6b1d85a93fa700166a395f14acb6ebb1b2d483706c90af89f9005015a7597160025038e8c608c6f8051bab003f578bba",
    "51d85b14dd82f6dc1bff4086f2b4a6a282d99e9659659659659659659659659659659659659659659659659659659659",
    "6500001e00000000000178787878787878787878787878787878787878787878787878787878787800003b0105000000",
    "01408d9acac8b21234da8589418b527f81077f02a7001600e575c6c2f85c248d33248f34d3c58c41091e03217c8b46f9",
    "1d23ef3f2beebe178acac00f0000720105000000033f6183864483606c1341909ac29525b1735492d950e8b8d800d87f",
    "5f8b1d75d0620d263d4c4d65644082497f864d833505b11f40884d83216b1d85a93fa700166a395f14acb6ebb1b2d483",
    "706c90af89f9005015a7597168dd1c8e46e85c7c40659642b003578bba51d85b14dd82f6dc1bff000070010500000005",
    "83864483606c1341909ac29525b1735492d950e8b8d800d87f5f8b1d75d0620d263d4c4d65644082497f864d833505b1",
    "1f40884d83216b1d85a93fa7001600e575c6c2f85c248d33248f34d3c58c41091e03217c8b46f91d23ef3f2beebe178a",
    "cac00f578bba51d85b14dd82f6dc1bff",
);
/// grpcio 1.85.3 client with the OTel interceptor, 3 calls on one channel (client->server bytes recorded by a relay).
const GRPCIO_INSTRUMENTED: &str = concat!(
    "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a000024040000000000000200000000000300000000000400",
    "400000000500400000000600004000fe0300000001000004080000000000003f000100000004010000000000012a0104",
    "0000000140053a70617468162f64656d6f2e477265657465722f53617948656c6c6f400a3a617574686f726974790f31",
    "32372e302e302e313a31353035328386400c636f6e74656e742d74797065106170706c69636174696f6e2f6772706340",
    "02746508747261696c6572734014677270632d6163636570742d656e636f64696e67176964656e746974792c20646566",
    "6c6174652c20677a6970400c677270632d74696d656f757403313053400a757365722d6167656e7430677270632d7079",
    "74686f6e2f312e38352e3320677270632d632f35382e302e3020286c696e75783b2063687474703229000b7472616365",
    "706172656e743730302d66613862666536353734303464666432303232336266333734303861656435662d6563323566",
    "61636364643666373162322d30330000040800000000010000000500000b000100000001000000000663616c6c2d3000",
    "000408000000000000000005000008060100000000e274c060aa18928e000062010400000003c4c38386c2c1c0400c67",
    "7270632d74696d656f75740631303130306dbf000b7472616365706172656e743730302d393735353231616635366338",
    "34633633393130663130363332363433626536342d663365643961316265336339333331332d30330000040800000000",
    "030000000500000b000100000003000000000663616c6c2d3100000408000000000000000011000008060000000000c8",
    "1b021b121c07b500004e010400000005c5c48386c3c2c1c0bf000b7472616365706172656e743730302d366331346666",
    "32646165306431646665616230343766646436376436663138622d326333383439616361353634343366352d30330000",
    "040800000000050000000500000b000100000005000000000663616c6c2d3200000408000000000000000011",
);
/// grpcio 1.85.3 client without interceptor: preface, SETTINGS and the first call.
const GRPCIO_SDK_ONLY: &str = concat!(
    "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a000024040000000000000200000000000300000000000400",
    "400000000500400000000600004000fe0300000001000004080000000000003f00010000000401000000000000e50104",
    "0000000140053a70617468162f64656d6f2e477265657465722f53617948656c6c6f400a3a617574686f726974790f31",
    "32372e302e302e313a31353035328386400c636f6e74656e742d74797065106170706c69636174696f6e2f6772706340",
    "02746508747261696c6572734014677270632d6163636570742d656e636f64696e67176964656e746974792c20646566",
    "6c6174652c20677a6970400c677270632d74696d656f757403313053400a757365722d6167656e7430677270632d7079",
    "74686f6e2f312e38352e3320677270632d632f35382e302e3020286c696e75783b206368747470322900000408000000",
    "00010000000500000b000100000001000000000663616c6c2d3000000408000000000000000005",
);

const TP: [&str; 3] = [
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-b9c7c989f97918e3-01",
];

fn bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn keep(name: &str) -> bool {
    matches!(name, "traceparent" | "tracestate" | "authorization")
}

fn feed_chunks<'a>(
    s: &mut RequestStream,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<H2Event> {
    chunks
        .into_iter()
        .flat_map(|c| s.feed(c, c.len() as u64, keep))
        .collect()
}

fn run(input: &[u8]) -> Vec<H2Event> {
    feed_chunks(&mut RequestStream::from_start(), [input])
}

fn requests(events: &[H2Event]) -> Vec<&H2Request> {
    events
        .iter()
        .filter_map(|e| match e {
            H2Event::Request(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// (offset, type, stream id, total frame length) of each frame after the preface.
fn frames(b: &[u8]) -> Vec<(usize, u8, u32, usize)> {
    let mut out = Vec::new();
    let mut at = PREFACE.len();
    while at + FRAME_HEADER_LEN <= b.len() {
        let head = FrameHead::parse(b[at..at + FRAME_HEADER_LEN].try_into().unwrap());
        let total = FRAME_HEADER_LEN + head.len as usize;
        out.push((at, head.kind, head.stream_id, total));
        at += total;
    }
    assert_eq!(at, b.len(), "vector ends on a frame boundary");
    out
}

fn nth_frame(b: &[u8], kind: u8, n: usize) -> (usize, usize) {
    let (at, _, _, len) = frames(b)
        .into_iter()
        .filter(|f| f.1 == kind)
        .nth(n)
        .unwrap();
    (at, len)
}

#[test]
fn h2_client_with_huffman_and_dynamic_table() {
    let input = bytes(H2_CLIENT);
    let mut s = RequestStream::from_start();
    let events = feed_chunks(&mut s, [&input[..]]);
    assert!(s.trusted());
    let reqs = requests(&events);
    assert_eq!(events.len(), 3, "{events:?}");
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.stream_id, 2 * i as u32 + 1);
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/demo.Greeter/SayHello");
        assert!(r.is_grpc());
        assert_eq!(r.header("traceparent"), Some(TP[i]));
        // `keep` says yes to authorization here; it is dropped all the same.
        assert_eq!(r.header("authorization"), None);
    }
    assert!(reqs[0].grpc_trace_bin);
    assert!(!reqs[1].grpc_trace_bin);
    assert_eq!(reqs[0].header("tracestate"), None);
    assert_eq!(reqs[2].header("tracestate"), Some("k=v"));
    let debug = format!("{events:?}");
    assert!(
        !debug.contains("SECRET") && !debug.contains("greeter.internal") && !debug.contains("AAAA")
    );
}

#[test]
fn grpcio_recorded_connections() {
    let events = run(&bytes(GRPCIO_INSTRUMENTED));
    let reqs = requests(&events);
    assert_eq!((events.len(), reqs.len()), (3, 3), "{events:?}");
    for (r, sid) in reqs.iter().zip([1, 3, 5]) {
        assert_eq!(r.stream_id, sid);
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/demo.Greeter/SayHello")
        );
        assert!(r.is_grpc());
        assert_eq!(r.header("traceparent").map(str::len), Some(55));
        assert!(!r.grpc_trace_bin);
    }
    assert_ne!(reqs[0].header("traceparent"), reqs[2].header("traceparent"));

    let events = run(&bytes(GRPCIO_SDK_ONLY));
    let reqs = requests(&events);
    assert_eq!(reqs.len(), 1, "{events:?}");
    assert!(reqs[0].is_grpc() && reqs[0].headers.is_empty());
}

#[test]
fn continuation_padding_priority_trailers_and_table_size_update() {
    let mut s = RequestStream::from_start();
    let events = feed_chunks(&mut s, [&bytes(CONTINUATION_CONN)[..]]);
    assert!(s.trusted());
    let reqs = requests(&events);
    // The client's trailer block on stream 1 is decoded (table) but is no request.
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        reqs.iter()
            .map(|r| (r.stream_id, r.path.as_str()))
            .collect::<Vec<_>>(),
        [(1, "/a/b"), (3, "/a/c"), (5, "/a/c")]
    );
    assert_eq!(reqs[0].header("traceparent"), Some(TP[0]));
    assert_eq!(reqs[1].header("traceparent"), Some(TP[1]));
    assert_eq!(reqs[2].header("traceparent"), Some(TP[2]));
}

#[test]
fn every_split_gives_the_same_events() {
    for vector in [H2_CLIENT, CONTINUATION_CONN, GRPCIO_INSTRUMENTED] {
        let input = bytes(vector);
        let whole = run(&input);
        let one_byte = feed_chunks(&mut RequestStream::from_start(), input.chunks(1));
        assert_eq!(one_byte, whole);
        // Two pieces, at every offset of the short vectors (loona-hpack's Huffman decoding is
        // slow in debug builds) and every 7th of the long one.
        let step = if input.len() > 500 { 7 } else { 1 };
        for cut in (1..input.len()).step_by(step) {
            let split = feed_chunks(
                &mut RequestStream::from_start(),
                [&input[..cut], &input[cut..]],
            );
            assert_eq!(split, whole, "cut at {cut}");
        }
        // A server reading each frame header and payload separately.
        let mut pieces: Vec<&[u8]> = vec![&input[..PREFACE.len()]];
        for (at, _, _, len) in frames(&input) {
            pieces.push(&input[at..at + FRAME_HEADER_LEN]);
            pieces.push(&input[at + FRAME_HEADER_LEN..at + len]);
        }
        assert_eq!(feed_chunks(&mut RequestStream::from_start(), pieces), whole);
    }
}

#[test]
fn uncaptured_data_payload_keeps_trust() {
    let input = bytes(H2_CLIENT);
    let (at, len) = nth_frame(&input, DATA, 0);
    let cut = at + FRAME_HEADER_LEN + 2;
    let end = at + len;
    let mut s = RequestStream::from_start();
    // One syscall carried everything up to the end of the first DATA frame, captured up to
    // `cut`; the next one starts at the next frame.
    let mut events = s.feed(&input[..cut], end as u64, keep);
    events.extend(s.feed(&input[end..], (input.len() - end) as u64, keep));
    assert!(s.trusted());
    assert_eq!(events, run(&input));
}

#[test]
fn uncaptured_header_block_loses_sync() {
    let input = bytes(H2_CLIENT);
    let (at, len) = nth_frame(&input, HEADERS, 1);
    let cut = at + FRAME_HEADER_LEN + 3;
    let mut s = RequestStream::from_start();
    let mut events = s.feed(&input[..cut], (at + len) as u64, keep);
    events.extend(s.feed(&input[at + len..], (input.len() - at - len) as u64, keep));
    assert!(!s.trusted() && s.in_step());
    assert_eq!(requests(&events).len(), 1);
    assert_eq!(
        events[1..],
        [
            H2Event::Undetermined {
                stream_id: 3,
                reason: Undetermined::Truncated
            },
            H2Event::LostSync(Undetermined::Truncated),
            H2Event::Undetermined {
                stream_id: 5,
                reason: Undetermined::Untrusted
            },
        ]
    );
}

#[test]
fn uncaptured_frame_header_loses_frame_boundaries_until_a_plausible_chunk() {
    let input = bytes(H2_CLIENT);
    let (data_at, _) = nth_frame(&input, DATA, 0);
    let (h3, _) = nth_frame(&input, HEADERS, 1);
    let (h5, _) = nth_frame(&input, HEADERS, 2);
    let mut s = RequestStream::from_start();
    // The syscall went on past DATA into HEADERS(3): that frame header was not captured.
    let mut events = s.feed(&input[..data_at + 12], (h3 + 20) as u64, keep);
    assert!(!s.trusted() && !s.in_step());
    // The rest of HEADERS(3) starts mid-frame: ignored.
    events.extend(s.feed(&input[h3 + 20..h5], (h5 - h3 - 20) as u64, keep));
    assert!(!s.in_step());
    // A chunk that starts on a frame boundary and ends on one: back in step, not trusted.
    events.extend(s.feed(&input[h5..], (input.len() - h5) as u64, keep));
    assert!(!s.trusted() && s.in_step());
    assert_eq!(requests(&events).len(), 1);
    assert_eq!(
        events[1..],
        [
            H2Event::LostSync(Undetermined::Truncated),
            H2Event::Undetermined {
                stream_id: 5,
                reason: Undetermined::Untrusted
            },
        ]
    );
}

#[test]
fn joining_mid_connection_counts_but_never_decodes() {
    let input = bytes(GRPCIO_INSTRUMENTED);
    let (h3, _) = nth_frame(&input, HEADERS, 1);
    let mut s = RequestStream::untrusted();
    let events = feed_chunks(&mut s, [&input[h3 + 1..h3 + 40], &input[h3..]]);
    assert!(!s.trusted());
    assert_eq!(
        events,
        [3, 5].map(|stream_id| H2Event::Undetermined {
            stream_id,
            reason: Undetermined::Untrusted
        })
    );
    // A lone frame header (a server's read) also puts it back in step.
    let mut s = RequestStream::untrusted();
    let pieces = frames(&input)
        .into_iter()
        .filter(|f| f.0 >= h3)
        .flat_map(|(at, _, _, len)| {
            [
                &input[at..at + FRAME_HEADER_LEN],
                &input[at + FRAME_HEADER_LEN..at + len],
            ]
        });
    assert_eq!(feed_chunks(&mut s, pieces), events);
}

#[test]
fn bad_streams_lose_sync_without_panicking() {
    let lost = |input: &[u8]| {
        let mut s = RequestStream::from_start();
        let events = feed_chunks(&mut s, [input]);
        assert!(!s.trusted());
        events
    };
    assert_eq!(
        lost(b"GET / HTTP/1.1\r\n\r\n"),
        [H2Event::LostSync(Undetermined::NoPreface)]
    );
    let mut conn = PREFACE.to_vec();
    // CONTINUATION without HEADERS.
    conn.extend_from_slice(&[0, 0, 1, CONTINUATION, FLAG_END_HEADERS, 0, 0, 0, 1, 0x82]);
    assert_eq!(lost(&conn), [H2Event::LostSync(Undetermined::Protocol)]);
    // An index past both tables.
    let mut conn = PREFACE.to_vec();
    conn.extend_from_slice(&[0, 0, 1, HEADERS, FLAG_END_HEADERS, 0, 0, 0, 1, 0xff]);
    conn.extend_from_slice(&[0, 0, 1, HEADERS, FLAG_END_HEADERS, 0, 0, 0, 3, 0x82]);
    let undetermined = |stream_id, reason| H2Event::Undetermined { stream_id, reason };
    assert_eq!(
        lost(&conn),
        [
            undetermined(1, Undetermined::Hpack),
            H2Event::LostSync(Undetermined::Hpack),
            undetermined(3, Undetermined::Untrusted),
        ]
    );
    // A header block too large to buffer; its frames are still followed.
    let mut conn = PREFACE.to_vec();
    let big = MAX_HEADER_BLOCK + 1;
    conn.extend_from_slice(&[
        (big >> 16) as u8,
        (big >> 8) as u8,
        big as u8,
        HEADERS,
        FLAG_END_HEADERS,
        0,
        0,
        0,
        1,
    ]);
    conn.resize(conn.len() + big, 0x82);
    conn.extend_from_slice(&[0, 0, 1, HEADERS, FLAG_END_HEADERS, 0, 0, 0, 3, 0x82]);
    assert_eq!(
        lost(&conn),
        [
            undetermined(1, Undetermined::TooLarge),
            H2Event::LostSync(Undetermined::TooLarge),
            undetermined(3, Undetermined::Untrusted),
        ]
    );
    // Padding longer than the frame.
    let mut conn = PREFACE.to_vec();
    conn.extend_from_slice(&[
        0,
        0,
        2,
        HEADERS,
        FLAG_END_HEADERS | FLAG_PADDED,
        0,
        0,
        0,
        1,
        9,
        0x82,
    ]);
    assert_eq!(
        lost(&conn),
        [
            undetermined(1, Undetermined::Protocol),
            H2Event::LostSync(Undetermined::Protocol)
        ]
    );
    // A decodable block without :method is counted, and the table stays trusted.
    let mut conn = PREFACE.to_vec();
    conn.extend_from_slice(&[0, 0, 1, HEADERS, FLAG_END_HEADERS, 0, 0, 0, 1, 0x86]);
    let mut s = RequestStream::from_start();
    assert_eq!(
        feed_chunks(&mut s, [&conn[..]]),
        [undetermined(1, Undetermined::Malformed)]
    );
    assert!(s.trusted());
}

#[test]
fn table_size_updates_up_to_the_limit_are_accepted() {
    // A header block: size update, then `:method: GET` and `:path: /` from the static table.
    let conn = |update: &[u8]| {
        let mut block = update.to_vec();
        block.extend_from_slice(&[0x82, 0x84]);
        let mut conn = PREFACE.to_vec();
        conn.extend_from_slice(&[
            0,
            0,
            block.len() as u8,
            HEADERS,
            FLAG_END_HEADERS,
            0,
            0,
            0,
            1,
        ]);
        conn.extend_from_slice(&block);
        conn
    };
    // 16384: above the 4096 default, legal once the server advertised it (which we never see).
    let events = run(&conn(&[0x3f, 0xe1, 0x7f]));
    assert_eq!(requests(&events).len(), 1, "{events:?}");
    assert_eq!(
        (
            requests(&events)[0].method.as_str(),
            requests(&events)[0].path.as_str()
        ),
        ("GET", "/")
    );
    // 65536 + 1 is past MAX_TABLE_SIZE.
    let over = MAX_TABLE_SIZE + 1 - 31;
    let events = run(&conn(&[
        0x3f,
        0x80 | (over & 0x7f) as u8,
        0x80 | ((over >> 7) & 0x7f) as u8,
        (over >> 14) as u8,
    ]));
    assert_eq!(
        events[1],
        H2Event::LostSync(Undetermined::Hpack),
        "{events:?}"
    );
}

/// xorshift64*: deterministic pseudo-random bytes without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Feeds random chunks with random uncaptured tails; only panics fail.
fn feed_randomly(rng: &mut Rng, s: &mut RequestStream, input: &[u8]) {
    let mut at = 0;
    while at < input.len() {
        let n = (1 + rng.below(64)).min(input.len() - at);
        let total = if rng.below(8) == 0 {
            n as u64 + rng.below(100) as u64
        } else {
            n as u64
        };
        s.feed(&input[at..at + n], total, keep);
        at += n;
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let vectors = [H2_CLIENT, CONTINUATION_CONN, GRPCIO_INSTRUMENTED].map(bytes);
    for round in 0..3000 {
        let mut input: Vec<u8> = if round % 2 == 0 {
            (0..rng.below(300)).map(|_| rng.next() as u8).collect()
        } else {
            // A real connection with a few bytes changed: deeper into the state machine.
            let mut v = vectors[rng.below(vectors.len())].clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            v
        };
        if round % 4 == 0 {
            input.splice(0..0, PREFACE.iter().copied());
        }
        feed_randomly(&mut rng, &mut RequestStream::from_start(), &input);
        feed_randomly(&mut rng, &mut RequestStream::untrusted(), &input);
    }
    let mut s = RequestStream::from_start();
    s.feed(&[], 0, keep);
    s.feed(&[], u64::MAX, keep);
    s.feed(&[0; 4], 2, keep);
}

#[test]
fn grpc_content_types() {
    let req = |ct: Option<&str>| H2Request {
        stream_id: 1,
        method: "POST".into(),
        path: "/x".into(),
        content_type: ct.map(Into::into),
        grpc_encoding: None,
        headers: Vec::new(),
        grpc_trace_bin: false,
    };
    assert!(req(Some("application/grpc")).is_grpc());
    assert!(req(Some("application/grpc+proto")).is_grpc());
    assert!(!req(Some("application/json")).is_grpc());
    assert!(!req(None).is_grpc());
}
