//! The vendored quiche's stream-collection patch (`vendor/quiche/PATCHES.md`, 3):
//! a client that sends one transaction per unidirectional stream, as a TPU client
//! does, must not keep memory per finished stream for the life of the connection.
//! Upstream quiche records every collected stream ID in a set, so a long-lived
//! connection (a static leader, our own validator) grew by one entry per
//! transaction; the soak scenario showed it as resident memory rising in steps.
//!
//! Measured with a counting allocator that counts, per thread, only while the
//! client side runs (the in-process quiche server keeps its own, legitimate, set
//! of peer streams it has collected).
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop it loudly"
)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    net::SocketAddr,
};

use afterburner_quic::{Identity, protocol::ALPN_TPU};

/// Counts the bytes the current thread holds, while armed.
struct Probe;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counters are
// const-initialised thread-locals (no allocation, no reentrancy).
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.with(Cell::get) {
            LIVE.with(|l| l.set(l.get() + layout.size() as isize));
        }
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.with(Cell::get) {
            LIVE.with(|l| l.set(l.get() - layout.size() as isize));
        }
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.with(Cell::get) {
            LIVE.with(|l| l.set(l.get() + new_size as isize - layout.size() as isize));
        }
        // SAFETY: as `GlobalAlloc::realloc` requires, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Probe = Probe;

/// Runs `f` with the client's allocations counted.
fn client<T>(f: impl FnOnce() -> T) -> T {
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    out
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

struct Pair {
    client: quiche::Connection,
    server: quiche::Connection,
    client_addr: SocketAddr,
    server_addr: SocketAddr,
}

impl Pair {
    fn new() -> Self {
        let client_addr: SocketAddr = "127.0.0.1:41000".parse().unwrap();
        let server_addr: SocketAddr = "127.0.0.1:41001".parse().unwrap();
        let mut sc = quiche::Config::with_boring_ssl_ctx_builder(
            quiche::PROTOCOL_VERSION,
            Identity::random().tls_context().unwrap(),
        )
        .unwrap();
        sc.set_application_protos(&[ALPN_TPU]).unwrap();
        sc.verify_peer(false);
        sc.set_initial_max_data(1 << 30);
        sc.set_initial_max_stream_data_uni(1232);
        sc.set_initial_max_streams_uni(1_000);
        sc.set_max_idle_timeout(60_000);
        let mut cc = quiche::Config::with_boring_ssl_ctx_builder(
            quiche::PROTOCOL_VERSION,
            Identity::random().tls_context().unwrap(),
        )
        .unwrap();
        cc.set_application_protos(&[ALPN_TPU]).unwrap();
        cc.verify_peer(false);
        cc.set_initial_max_data(1 << 20);
        cc.set_max_idle_timeout(60_000);
        let client = quiche::connect(
            None,
            &quiche::ConnectionId::from_ref(&[1; 16]),
            client_addr,
            server_addr,
            &mut cc,
        )
        .unwrap();
        let server = quiche::accept(
            &quiche::ConnectionId::from_ref(&[2; 16]),
            None,
            server_addr,
            client_addr,
            &mut sc,
        )
        .unwrap();
        let mut pair = Self {
            client,
            server,
            client_addr,
            server_addr,
        };
        pair.settle();
        assert!(pair.client.is_established() && pair.server.is_established());
        pair
    }

    /// Moves datagrams both ways until neither side has any; the server reads
    /// every stream to its end (so both sides collect it).
    fn settle(&mut self) {
        let mut buf = [0u8; 1500];
        for _ in 0..10_000 {
            let mut moved = false;
            loop {
                let sent = client(|| self.client.send(&mut buf));
                let Ok((n, _)) = sent else { break };
                moved = true;
                let info = quiche::RecvInfo {
                    from: self.client_addr,
                    to: self.server_addr,
                };
                self.server.recv(&mut buf[..n], info).unwrap();
            }
            let readable: Vec<u64> = self.server.readable().collect();
            let mut data = [0u8; 1500];
            for id in readable {
                while self.server.stream_recv(id, &mut data).is_ok() {}
            }
            while let Ok((n, _)) = self.server.send(&mut buf) {
                moved = true;
                let info = quiche::RecvInfo {
                    from: self.server_addr,
                    to: self.client_addr,
                };
                client(|| self.client.recv(&mut buf[..n], info)).unwrap();
            }
            if !moved {
                return;
            }
        }
        panic!("did not settle");
    }

    /// Sends `n` one-transaction streams from `next`, moving datagrams whenever
    /// the congestion window has no room.
    fn send_streams(&mut self, next: &mut u64, n: u64) {
        let tx = [7u8; 200];
        for _ in 0..n {
            let id = *next;
            *next += 4;
            let mut tries = 0;
            loop {
                match client(|| self.client.stream_send(id, &tx, true)) {
                    Ok(len) => {
                        assert_eq!(len, tx.len(), "stream {id}");
                        break;
                    }
                    // No room in the congestion window, or no stream credit yet:
                    // move datagrams (the server reads and grants more) and retry.
                    Err(quiche::Error::Done | quiche::Error::StreamLimit) if tries < 10 => {
                        tries += 1;
                        self.settle();
                    }
                    Err(e) => panic!("stream {id}: {e:?}"),
                }
            }
        }
        self.settle();
    }
}

/// 60,000 one-transaction streams after a warm-up: what the client holds must not
/// grow with them. Upstream quiche grows by its collected-stream set (one ID per
/// stream: about a MiB here); patched, nothing is left behind.
#[test]
fn finished_streams_leave_no_memory_behind() {
    let mut pair = Pair::new();
    let mut next = 2u64;
    // Warm-up: the connection's working set (stream map, packet bookkeeping) grows
    // to its size for this rate and window.
    pair.send_streams(&mut next, 10_000);
    let before = live();
    pair.send_streams(&mut next, 30_000);
    let first = live() - before;
    pair.send_streams(&mut next, 30_000);
    let growth = live() - before;
    println!(
        "client memory held after 30,000 more streams: {first:+} bytes, after 60,000: {growth:+} \
         bytes ({} streams in all)",
        (next - 2) / 4
    );
    assert!(
        growth < 64 * 1024,
        "the client keeps {growth} bytes for 60,000 finished streams"
    );
    // A collected stream stays collected: it cannot be written again.
    assert_eq!(
        pair.client.stream_send(2, b"again", true),
        Err(quiche::Error::Done)
    );
}
