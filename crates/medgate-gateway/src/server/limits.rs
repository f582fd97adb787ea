//! How much of the HIS listener one client may take: open connections (all clients, and per
//! client certificate), requests in flight per certificate, and a token bucket of requests per
//! certificate. A client over its share is answered 429 with `Retry-After` and an
//! OperationOutcome; the others are not slowed down, because nothing here waits: a request
//! either takes its slot at once or is refused.
//!
//! Boundary: counting, keyed by the SHA-256 of the client's certificate (one HIS certificate, one
//! share, whatever the number of connections). The answers themselves are made by the API's one
//! mapping ([`crate::api::error_response`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::config::Limits;

/// A client certificate's key in the tables: the SHA-256 of its DER.
pub type ClientKey = [u8; 32];

pub fn client_key(certificate_der: &[u8]) -> ClientKey {
    Sha256::digest(certificate_der).into()
}

/// Why a client is refused, and when it may try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub retry_after: u32,
}

#[derive(Debug)]
struct Client {
    tokens: f64,
    refilled: Instant,
    connections: u32,
    in_flight: u32,
}

/// Counters of refusals, for `/metrics`.
#[derive(Debug, Default)]
pub struct Refused {
    pub connections: AtomicU64,
    pub client_connections: AtomicU64,
    pub in_flight: AtomicU64,
    pub rate: AtomicU64,
}

/// The limits in force and what each client holds now.
#[derive(Debug)]
pub struct Limiter {
    settings: Limits,
    open: AtomicU32,
    in_flight: AtomicU32,
    clients: Mutex<HashMap<ClientKey, Client>>,
    pub refused: Refused,
}

/// Tables beyond this many clients are pruned of idle ones (whose buckets are full again).
const PRUNE_ABOVE: usize = 1024;

impl Limiter {
    pub fn new(settings: Limits) -> Arc<Limiter> {
        Arc::new(Limiter { settings, open: AtomicU32::new(0), in_flight: AtomicU32::new(0), clients: Mutex::new(HashMap::new()), refused: Refused::default() })
    }

    pub fn settings(&self) -> &Limits {
        &self.settings
    }

    /// Open HIS connections (handshaking included).
    pub fn open_connections(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// Requests being processed, all clients.
    pub fn requests_in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Client>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot among all connections, taken before the TLS handshake; `None` when the listener is
    /// full (the connection is then closed at once: there is no client to answer yet).
    pub fn accept(self: &Arc<Self>) -> Option<Slot> {
        let prev = self.open.fetch_add(1, Ordering::SeqCst);
        if prev >= self.settings.max_connections {
            self.open.fetch_sub(1, Ordering::SeqCst);
            self.refused.connections.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(self.clone()))
    }

    /// A connection of the client with certificate `key`, once its handshake is done.
    pub fn connect(self: &Arc<Self>, key: ClientKey) -> Result<ClientConnection, Refusal> {
        let mut clients = self.clients();
        if clients.len() > PRUNE_ABOVE {
            let full = f64::from(self.settings.burst_per_client) / f64::from(self.settings.requests_per_second_per_client);
            clients.retain(|_, c| c.connections > 0 || c.in_flight > 0 || c.refilled.elapsed().as_secs_f64() < full);
        }
        let c = clients.entry(key).or_insert_with(|| Client { tokens: f64::from(self.settings.burst_per_client), refilled: Instant::now(), connections: 0, in_flight: 0 });
        if c.connections >= self.settings.max_connections_per_client {
            self.refused.client_connections.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal {
                message: format!("this client certificate already has {} connections open, the most allowed; reuse them", c.connections),
                retry_after: 1,
            });
        }
        c.connections += 1;
        Ok(ClientConnection { limiter: self.clone(), key })
    }

    /// One request of the client `key`: a token from its bucket and a slot among its requests in
    /// flight, or a refusal.
    pub fn request(self: &Arc<Self>, key: &ClientKey) -> Result<InFlight, Refusal> {
        let rate = f64::from(self.settings.requests_per_second_per_client);
        let burst = f64::from(self.settings.burst_per_client);
        let mut clients = self.clients();
        let Some(c) = clients.get_mut(key) else {
            return Err(Refusal { message: "no connection is registered for this client".into(), retry_after: 1 });
        };
        let now = Instant::now();
        c.tokens = (c.tokens + now.duration_since(c.refilled).as_secs_f64() * rate).min(burst);
        c.refilled = now;
        if c.tokens < 1.0 {
            self.refused.rate.fetch_add(1, Ordering::Relaxed);
            let wait = ((1.0 - c.tokens) / rate).ceil().max(1.0);
            return Err(Refusal {
                message: format!("this client certificate sent more than {} requests a second (burst {}); slow down", self.settings.requests_per_second_per_client, self.settings.burst_per_client),
                retry_after: wait as u32,
            });
        }
        if c.in_flight >= self.settings.max_requests_in_flight_per_client {
            self.refused.in_flight.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal { message: format!("this client certificate already has {} requests in progress, the most allowed", c.in_flight), retry_after: 1 });
        }
        c.tokens -= 1.0;
        c.in_flight += 1;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(InFlight { limiter: self.clone(), key: *key })
    }
}

/// A place among all connections; given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Limiter>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One of a client's connections; given back when dropped.
#[derive(Debug)]
pub struct ClientConnection {
    limiter: Arc<Limiter>,
    key: ClientKey,
}

impl ClientConnection {
    pub fn key(&self) -> &ClientKey {
        &self.key
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        if let Some(c) = self.limiter.clients().get_mut(&self.key) {
            c.connections = c.connections.saturating_sub(1);
        }
    }
}

/// One request being processed; given back when dropped.
#[derive(Debug)]
pub struct InFlight {
    limiter: Arc<Limiter>,
    key: ClientKey,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = self.limiter.clients().get_mut(&self.key) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_client: u32, in_flight: u32, rate: u32, burst: u32) -> Arc<Limiter> {
        Limiter::new(Limits {
            max_connections: 3,
            max_connections_per_client: per_client,
            max_requests_in_flight_per_client: in_flight,
            requests_per_second_per_client: rate,
            burst_per_client: burst,
            ..Limits::default()
        })
    }

    #[test]
    fn the_bucket_lets_a_burst_through_then_refuses_with_a_retry_time() {
        let l = limiter(4, 100, 1, 3);
        let k = client_key(b"a");
        let _c = l.connect(k).unwrap_or_else(|r| panic!("{r:?}"));
        for _ in 0..3 {
            drop(l.request(&k).unwrap_or_else(|r| panic!("{r:?}")));
        }
        let r = l.request(&k).expect_err("the bucket is empty");
        assert_eq!(r.retry_after, 1);
        // Another certificate has its own bucket.
        let other = client_key(b"b");
        let _o = l.connect(other).unwrap_or_else(|r| panic!("{r:?}"));
        assert!(l.request(&other).is_ok());
        assert_eq!(l.refused.rate.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn connections_and_requests_in_flight_are_counted_and_given_back() {
        let l = limiter(2, 1, 1000, 1000);
        let k = client_key(b"a");
        let c1 = l.connect(k).unwrap_or_else(|r| panic!("{r:?}"));
        let _c2 = l.connect(k).unwrap_or_else(|r| panic!("{r:?}"));
        assert!(l.connect(k).is_err(), "a third connection of one certificate");
        drop(c1);
        let _c3 = l.connect(k).unwrap_or_else(|r| panic!("a slot given back is free: {r:?}"));
        let first = l.request(&k).unwrap_or_else(|r| panic!("{r:?}"));
        assert!(l.request(&k).is_err(), "a second request in flight");
        assert_eq!(l.requests_in_flight(), 1);
        drop(first);
        assert!(l.request(&k).is_ok());
    }

    #[test]
    fn the_listener_as_a_whole_has_a_ceiling() {
        let l = limiter(2, 1, 1, 1);
        let slots: Vec<Slot> = (0..3).map(|_| l.accept().unwrap_or_else(|| panic!("room"))).collect();
        assert!(l.accept().is_none());
        assert_eq!(l.open_connections(), 3);
        drop(slots);
        assert_eq!(l.open_connections(), 0);
    }
}
