//! The kernel's per-CPU counters: one per thing the programs saw, and one per exit that loses
//! data. The kernel indexes the `COUNTERS` array with them; the agent prints them by name in the
//! table, JSON and OTLP metrics, and `is_drop` says which mean lost requests.

/// Index into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// Send/receive syscalls whose first bytes were read and checked for an HTTP method.
    Inspected = 0,
    /// Requests written to the ring buffer.
    Captured,
    /// Captured requests whose syscall carried more than the capture cap.
    Truncated,
    /// Requests lost because the ring buffer was full.
    RingbufFull,
    /// Syscalls whose user buffer could not be read (bpf_probe_read_user failed).
    ReadFailed,
    /// Receive syscalls not followed because another thread held their stash slot, or TLS
    /// calls not followed because their stash map refused the entry.
    StashFull,
    /// TLS ClientHello records sent at the syscall level (bytes `16 03 .. .. .. 01`): TLS
    /// connections started, whether or not a TLS library probe sees their plaintext.
    TlsClientHellos,
    /// HTTP/2 connections whose client preface was seen (followed from their start).
    H2Connections,
    /// HTTP/2 connections joined mid-way (a request HEADERS frame without a preface seen,
    /// e.g. opened before the agent started): their calls are undetermined.
    H2Joined,
    /// TLS library calls whose arguments could not be read at their uprobe. (The syscall
    /// programs load the saved registers directly since they became BTF tracepoints: they
    /// no longer fail here.)
    ArgsUnreadable,
    /// HTTP/2 connections that could not be entered in the kernel's connection map: their
    /// later frames are not captured.
    H2NotFollowed,
    /// A process's "has HTTP/2 connections" hint slot was taken over by another process. If the
    /// first one is still alive, its connections are found again from their next request
    /// HEADERS frame, as joined late (counted in `h2_joined`, their calls undetermined).
    H2HintReplaced,
    /// TLS library returns (OpenSSL uretprobes, Go `Read` returns) with no entry stashed for
    /// the call: the call started before the probe was attached, or its entry was evicted.
    TlsReturnUnmatched,
    /// The per-CPU scratch record was unavailable (never expected; counted, not assumed).
    ScratchUnavailable,
    /// `connect` calls whose peer could not be recorded (address unreadable, map refused it):
    /// requests on the socket then have no peer unless /proc shows it.
    PeerNotRecorded,
    /// Go TLS calls whose socket could not be found from the `tls.Conn` (a wrapper
    /// `net.Conn`): captured, but without a peer.
    GoTlsFdUnknown,
    /// Exec, fork and exit records lost (ring buffer full): the agent then reads /proc, and a
    /// process that already exited is unknown.
    ProcessRecordsLost,
    /// Exec records whose environment or path could not be read.
    ExecUnreadable,
    /// Exec records whose environment block was larger than `EXEC_ENV_MAX` (cut).
    ExecEnvTruncated,
    /// Connections found to carry OTLP trace exports (their requests then read whole).
    ExportConnections,
    /// Chunks of export connections lost (ring buffer full, unreadable): the export they
    /// belong to is incomplete, and not used.
    ExportChunksLost,
    /// Bytes of export connections not captured: a send longer than `--span-intake-max-bytes`.
    ExportBytesSkipped,
    /// Outbound HTTP/2 connections to ports other than OTLP/gRPC's read whole on probation
    /// (`EXPORT_PROBATION_BYTES`), until the agent finds whether they carry exports.
    ExportProbations,
    /// HTTP/1 requests not captured because their CPU was past its capture budget
    /// (`--max-capture-rate`): one in `SAMPLE_ONE_IN` past the budget is captured, these are
    /// the rest. Not judged, by choice of the operator.
    SampledOut,
}

impl Counter {
    pub const COUNT: usize = 24;

    /// Every counter, in index order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::Inspected,
        Self::Captured,
        Self::Truncated,
        Self::RingbufFull,
        Self::ReadFailed,
        Self::StashFull,
        Self::TlsClientHellos,
        Self::H2Connections,
        Self::H2Joined,
        Self::ArgsUnreadable,
        Self::H2NotFollowed,
        Self::H2HintReplaced,
        Self::TlsReturnUnmatched,
        Self::ScratchUnavailable,
        Self::PeerNotRecorded,
        Self::GoTlsFdUnknown,
        Self::ProcessRecordsLost,
        Self::ExecUnreadable,
        Self::ExecEnvTruncated,
        Self::ExportConnections,
        Self::ExportChunksLost,
        Self::ExportBytesSkipped,
        Self::ExportProbations,
        Self::SampledOut,
    ];

    /// The name in the table, the JSON `counters` line and the OTLP `reason` attribute.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Inspected => "inspected",
            Self::Captured => "captured",
            Self::Truncated => "truncated",
            Self::RingbufFull => "ringbuf_full",
            Self::ReadFailed => "read_failed",
            Self::StashFull => "stash_full",
            Self::TlsClientHellos => "tls_client_hellos",
            Self::H2Connections => "h2_connections",
            Self::H2Joined => "h2_joined",
            Self::ArgsUnreadable => "args_unreadable",
            Self::H2NotFollowed => "h2_not_followed",
            Self::H2HintReplaced => "h2_hint_replaced",
            Self::TlsReturnUnmatched => "tls_return_unmatched",
            Self::ScratchUnavailable => "scratch_unavailable",
            Self::PeerNotRecorded => "peer_not_recorded",
            Self::GoTlsFdUnknown => "go_tls_fd_unknown",
            Self::ProcessRecordsLost => "process_records_lost",
            Self::ExecUnreadable => "exec_unreadable",
            Self::ExecEnvTruncated => "exec_env_truncated",
            Self::ExportConnections => "export_connections",
            Self::ExportChunksLost => "export_chunks_lost",
            Self::ExportBytesSkipped => "export_bytes_skipped",
            Self::ExportProbations => "export_probations",
            Self::SampledOut => "sampled_out",
        }
    }

    /// Whether the counter counts data the kernel lost (requests, or what judging them needs):
    /// exported as `tracegap.capture.dropped{reason}`.
    pub const fn is_drop(self) -> bool {
        match self {
            Self::RingbufFull
            | Self::ReadFailed
            | Self::StashFull
            | Self::ArgsUnreadable
            | Self::H2NotFollowed
            | Self::TlsReturnUnmatched
            | Self::ScratchUnavailable
            | Self::PeerNotRecorded
            | Self::GoTlsFdUnknown
            | Self::ProcessRecordsLost
            | Self::ExecUnreadable
            | Self::ExportChunksLost
            | Self::ExportBytesSkipped
            | Self::SampledOut => true,
            Self::Inspected
            | Self::Captured
            | Self::Truncated
            | Self::TlsClientHellos
            | Self::H2Connections
            | Self::H2Joined
            | Self::H2HintReplaced
            | Self::ExecEnvTruncated
            | Self::ExportConnections
            | Self::ExportProbations => false,
        }
    }

    /// The index in the `COUNTERS` array.
    pub const fn index(self) -> u32 {
        self as u32
    }
}

// ALL is in index order and complete: the last variant's index is COUNT - 1.
const _: () = {
    let mut i = 0;
    while i < Counter::COUNT {
        assert!(Counter::ALL[i] as usize == i);
        i += 1;
    }
};
