//! Every HTTP listener's guard (JSON-RPC and REST, the websocket proxy, metrics): a
//! cap on open connections in total and per client address, a deadline for a
//! request's headers (which also closes keep-alive connections left idle that
//! long) and for its body. A slow or idle client holds at most its own address's
//! share and only until the deadline, so it cannot hold the service.
//!
//! HTTP/1.1 only (with upgrades, for websockets): what Solana clients and agave's
//! RPC speak. hyper's HTTP/1 connection applies the header deadline itself; the
//! body deadline is tower-http's. A websocket leaves the count once upgraded: the
//! proxy bounds its clients itself (`rpc.websocket_max_clients`).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus::IntCounterVec;
use tokio::sync::watch;

/// The bounds, from `[rpc]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guard {
    /// Open connections at most; more are closed as they arrive.
    pub max_connections: usize,
    /// Open connections from one client address at most.
    pub max_connections_per_ip: usize,
    /// A request's headers (and a keep-alive connection's next request) must arrive
    /// within this.
    pub header_timeout: Duration,
    /// A request's body must arrive within this.
    pub body_timeout: Duration,
}

impl Default for Guard {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_ip: 256,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// Open connections, in total and by client address.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was closed on arrival (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` reached.
    Total,
    /// `max_connections_per_ip` reached for its address.
    PerIp,
}

impl Refused {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Total => "total",
            Refused::PerIp => "per_ip",
        }
    }
}

/// A connection's place; given back when it closes.
struct Place {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock() {
            open.total = open.total.saturating_sub(1);
            if let Some(n) = open.by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    open.by_ip.remove(&self.ip);
                }
            }
        }
    }
}

fn admit(open: &Arc<Mutex<Open>>, ip: IpAddr, guard: Guard) -> Result<Place, Refused> {
    let Ok(mut o) = open.lock() else {
        return Err(Refused::Total);
    };
    if o.total >= guard.max_connections {
        return Err(Refused::Total);
    }
    let mine = o.by_ip.entry(ip).or_insert(0);
    if *mine >= guard.max_connections_per_ip {
        return Err(Refused::PerIp);
    }
    *mine += 1;
    o.total += 1;
    Ok(Place {
        open: open.clone(),
        ip,
    })
}

/// Serves `router` on `listener` under `guard` until `stop`, then lets open
/// requests finish (connections still open after 1 s, such as event streams, are
/// dropped). `refused`
/// counts connections closed on arrival by `{listener, reason}`.
pub fn serve(
    name: &'static str,
    listener: tokio::net::TcpListener,
    router: axum::Router,
    guard: Guard,
    refused: IntCounterVec,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        guard.body_timeout,
    ));
    for r in [Refused::Total, Refused::PerIp] {
        refused.with_label_values(&[name, r.label()]);
    }
    tokio::spawn(async move {
        let open = Arc::new(Mutex::new(Open::default()));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(guard.header_timeout);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, say: back off instead of spinning.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                    continue;
                }
            };
            let place = match admit(&open, peer.ip(), guard) {
                Ok(p) => p,
                Err(why) => {
                    refused.with_label_values(&[name, why.label()]).inc();
                    tracing::debug!(listener = name, %peer, reason = why.label(), "connection refused");
                    drop(stream);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(router.clone());
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let mut conn = std::pin::pin!(conn);
                let ended = tokio::select! {
                    r = conn.as_mut() => Some(r),
                    _ = stop.wait_for(|s| *s) => None,
                };
                let result = match ended {
                    Some(r) => r,
                    None => {
                        // Stopping: finish the request in progress, then close.
                        conn.as_mut().graceful_shutdown();
                        tokio::time::timeout(SHUTDOWN_GRACE, conn)
                            .await
                            .unwrap_or(Ok(()))
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(listener = name, %peer, error = %e, "connection ended");
                }
                drop(place);
            });
        }
        drop(listener);
        // Wait for the connections to close (at most the grace).
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while open.lock().map(|o| o.total > 0).unwrap_or(false)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// How long open requests may finish after a stop (event streams never do).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_in_total_and_per_address_and_given_back() {
        let open = Arc::new(Mutex::new(Open::default()));
        let guard = Guard {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Guard::default()
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = admit(&open, a, guard).unwrap();
        let _a2 = admit(&open, a, guard).unwrap();
        assert_eq!(admit(&open, a, guard).err(), Some(Refused::PerIp));
        let _b1 = admit(&open, b, guard).unwrap();
        assert_eq!(admit(&open, b, guard).err(), Some(Refused::Total));
        drop(a1);
        assert!(
            admit(&open, b, guard).is_ok(),
            "a closed place is given back"
        );
    }
}
