//! The HTTP/2 connections the kernel follows (agent-ebpf/src/h2.rs), each with the decoder of
//! its request direction ([`crate::h2::RequestStream`]).
//!
//! The kernel sends a connection's bytes in order, per process and fd. A connection is trusted
//! from its preface; one whose first bytes here are not the preface (joined after the agent
//! started, or evicted from this table) or that lost an event (ring buffer full: `H2_GAP`) is
//! decoded untrusted: its calls are counted as undetermined, never judged.

use std::collections::{HashMap, VecDeque};

use agent_common::flags;

use crate::{
    capture::CapturedEvent,
    h2::{H2Event, RequestStream},
    http::HTTP2_PREFACE,
    trace_context::is_trace_header,
};

/// Connections decoded at once; past it the oldest is forgotten (and is untrusted if it
/// speaks again).
pub const MAX_CONNECTIONS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnKey {
    pid: u32,
    fd: i32,
    tls: bool,
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
    /// Feeds one captured event of an HTTP/2 connection to its decoder.
    pub fn feed(&mut self, event: &CapturedEvent) -> Vec<H2Event> {
        let key = ConnKey {
            pid: event.pid,
            fd: event.fd,
            tls: event.tls(),
        };
        if event.data.starts_with(HTTP2_PREFACE) {
            self.insert(key, RequestStream::from_start());
        } else if event.flags & flags::H2_GAP != 0 || !self.streams.contains_key(&key) {
            self.insert(key, RequestStream::untrusted());
        }
        match self.streams.get_mut(&key) {
            Some(stream) => stream.feed(&event.data, event.total_len, is_trace_header),
            None => Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.streams.len()
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
