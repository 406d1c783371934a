//! The HTTP/2 connections the kernel follows (agent-ebpf/src/h2.rs), each with the decoder of
//! its request direction ([`RequestStream`]).
//!
//! The kernel sends a connection's bytes in order, per process and fd. A connection is trusted
//! from its preface; one whose first bytes here are not the preface (joined after the agent
//! started, or evicted from this table) or that lost an event (ring buffer full: `H2_GAP`) is
//! decoded untrusted: its calls are counted as undetermined, never judged.

use std::collections::{HashMap, VecDeque};

use super::{H2Event, RequestStream};

/// Connections decoded at once; past it the oldest is forgotten (counted, and untrusted if it
/// speaks again).
pub const MAX_CONNECTIONS: usize = 4096;

/// One connection of one process, as the kernel names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub pid: u32,
    pub fd: i32,
    /// Plaintext from a TLS library probe (a TLS connection's fd also carries ciphertext).
    pub tls: bool,
}

/// What the kernel said about one chunk of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// The first bytes of the syscall.
    pub data: &'a [u8],
    /// How many bytes the syscall carried.
    pub total_len: u64,
    /// The chunk starts with the client preface.
    pub preface: bool,
    /// An earlier chunk of the connection was lost in the kernel.
    pub gap: bool,
}

#[derive(Default)]
pub struct H2Connections {
    streams: HashMap<ConnKey, RequestStream>,
    /// Insertion order, for eviction.
    order: VecDeque<ConnKey>,
    /// Connections forgotten to stay within [`MAX_CONNECTIONS`].
    pub evicted: u64,
}

impl H2Connections {
    /// Feeds one chunk of a connection to its decoder: a preface starts a fresh, trusted one;
    /// a gap or an unknown connection an untrusted one.
    pub fn feed(
        &mut self,
        key: ConnKey,
        chunk: Chunk<'_>,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<H2Event> {
        if chunk.preface {
            self.insert(key, RequestStream::from_start());
        } else if chunk.gap || !self.streams.contains_key(&key) {
            self.insert(key, RequestStream::untrusted());
        }
        match self.streams.get_mut(&key) {
            Some(stream) => stream.feed(chunk.data, chunk.total_len, keep),
            None => Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Takes a connection's decoder out (it became an export connection, read whole from now
    /// on: its decoder goes on with the HPACK table it has).
    pub fn take(&mut self, key: ConnKey) -> Option<RequestStream> {
        let stream = self.streams.remove(&key)?;
        self.order.retain(|k| *k != key);
        Some(stream)
    }

    /// Gives a connection its decoder back (see [`H2Connections::take`]).
    pub fn restore(&mut self, key: ConnKey, stream: RequestStream) {
        self.insert(key, stream);
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Forgets the connections of processes that exited.
    pub fn retain(&mut self, alive: impl Fn(u32) -> bool) {
        self.streams.retain(|k, _| alive(k.pid));
        let streams = &self.streams;
        self.order.retain(|k| streams.contains_key(k));
    }

    fn insert(&mut self, key: ConnKey, stream: RequestStream) {
        if self.streams.insert(key, stream).is_none() {
            self.order.push_back(key);
        }
        while self.streams.len() > MAX_CONNECTIONS {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.streams.remove(&oldest).is_some() {
                self.evicted += 1;
            }
        }
    }
}
