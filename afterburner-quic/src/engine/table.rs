//! The connection table: a slot per connection (slots are reused, so an index stays
//! valid while its connection lives), the open connection of each address, and the
//! LRU clock that picks the connection to evict when the table is full.

use std::{collections::HashMap, net::SocketAddr};

use super::connection::Conn;

#[derive(Default)]
pub(super) struct Table {
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Open (not closing) connections by address.
    by_addr: HashMap<SocketAddr, usize>,
    lru_clock: u64,
    /// The last address looked up and its slot: consecutive submissions usually
    /// share one.
    last_lookup: Option<(SocketAddr, usize)>,
}

impl Table {
    pub(super) fn get(&self, idx: usize) -> Option<&Conn> {
        self.slots.get(idx).and_then(Option::as_ref)
    }

    pub(super) fn get_mut(&mut self, idx: usize) -> Option<&mut Conn> {
        self.slots.get_mut(idx).and_then(Option::as_mut)
    }

    /// Slots in use or free: indices below this may hold a connection.
    pub(super) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Open (not closing) connections.
    pub(super) fn open_count(&self) -> usize {
        self.by_addr.len()
    }

    /// No connection at all, closing ones included.
    pub(super) fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// The open connection to `target`, without touching the LRU order.
    pub(super) fn find(&self, target: SocketAddr) -> Option<usize> {
        self.by_addr.get(&target).copied()
    }

    /// The open connection to `target`, now its most recently used.
    pub(super) fn use_open(&mut self, target: SocketAddr) -> Option<usize> {
        self.lru_clock += 1;
        let idx = match self.last_lookup {
            Some((addr, idx)) if addr == target => idx,
            _ => *self.by_addr.get(&target)?,
        };
        let clock = self.lru_clock;
        if let Some(conn) = self.get_mut(idx) {
            conn.last_used = clock;
        }
        self.last_lookup = Some((target, idx));
        Some(idx)
    }

    /// Adds a new open connection, most recently used; returns its slot.
    pub(super) fn insert(&mut self, mut conn: Conn) -> usize {
        conn.last_used = self.lru_clock;
        let peer = conn.peer;
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(conn);
                i
            }
            None => {
                self.slots.push(Some(conn));
                self.slots.len() - 1
            }
        };
        self.by_addr.insert(peer, idx);
        idx
    }

    /// The open connection used least recently.
    pub(super) fn lru_victim(&self) -> Option<usize> {
        self.by_addr
            .values()
            .filter_map(|&i| Some((self.get(i)?.last_used, i)))
            .min()
            .map(|(_, i)| i)
    }

    /// Connection `idx` is closing: it keeps its slot (to send CONNECTION_CLOSE) but
    /// is no longer its address's open connection.
    pub(super) fn unmap(&mut self, idx: usize) {
        if let Some(peer) = self.get(idx).map(|c| c.peer)
            && self.by_addr.get(&peer) == Some(&idx)
        {
            self.by_addr.remove(&peer);
        }
        self.last_lookup = None;
    }

    /// Frees slot `idx`, returning its connection.
    pub(super) fn remove(&mut self, idx: usize) -> Option<Conn> {
        self.unmap(idx);
        let conn = self.slots.get_mut(idx)?.take()?;
        self.free.push(idx);
        Some(conn)
    }
}
