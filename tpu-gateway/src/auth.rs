//! API keys: who is calling, and what each key may do. A key is a secret a client
//! presents (`Authorization: Bearer <secret>`, `x-api-key: <secret>`, or the
//! `api-key` query parameter for websocket clients that cannot set headers), with a
//! name (the metric label and the log name: the secret itself is never logged or
//! exported), a rate (a token bucket of transactions per second with a burst), and
//! a share of the ledger's places (so one key cannot fill the send queue for the
//! others). Keys come from a file of their own (`auth.keys_file`: a Kubernetes
//! Secret or a 0600 file), not from the main configuration.
//!
//! The bucket is sans-IO (time is an argument); the HTTP side is a middleware that
//! puts the caller's [`Key`] in the request for the handlers.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The query parameter websocket clients put their key in.
pub const QUERY_PARAMETER: &str = "api-key";

/// One key as the keys file gives it.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Its name: metric label and log name (`[A-Za-z0-9_-]`, at most 64).
    pub name: String,
    /// What the client presents.
    pub secret: String,
    /// Transactions per second, sustained.
    pub tx_per_sec: f64,
    /// Transactions at once above the rate (default: one second's worth).
    #[serde(default)]
    pub burst: Option<u32>,
    /// The share of the ledger's places (`limits.max_tracked`) its transactions may
    /// hold at once, 0 < share <= 1 (default 1).
    #[serde(default)]
    pub queue_share: Option<f64>,
}

impl std::fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("KeySpec")
            .field("name", &self.name)
            .field("tx_per_sec", &self.tx_per_sec)
            .field("burst", &self.burst)
            .field("queue_share", &self.queue_share)
            .finish_non_exhaustive()
    }
}

/// The keys file: `[[key]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeySpec>,
}

/// Reads a keys file.
///
/// # Errors
/// Unreadable, not TOML, or a key that is not well formed (named, never quoted).
pub fn load_keys_file(path: &Path) -> Result<Vec<KeySpec>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("auth.keys_file {}: {e}", path.display()))?;
    let file: KeysFile =
        parse_keys(&text).map_err(|e| format!("auth.keys_file {}: {e}", path.display()))?;
    Ok(file.key)
}

/// The keys of the keys file at `path`, each holding at most its share of
/// `max_tracked` places.
///
/// # Errors
/// As [`load_keys_file`] and [`Keys::new`], naming the file.
pub fn keys_from_file(path: &Path, max_tracked: usize) -> Result<Keys, String> {
    let specs = load_keys_file(path)?;
    Keys::new(&specs, max_tracked).map_err(|e| format!("auth.keys_file {}: {e}", path.display()))
}

/// TOML through figment's parser (the one the configuration uses).
fn parse_keys(text: &str) -> Result<KeysFile, String> {
    use figment::providers::Format as _;
    figment::Figment::from(figment::providers::Toml::string(text))
        .extract::<KeysFile>()
        .map_err(|e| e.to_string())
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// Full at first.
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes one token at `now`, or says how long until one is there.
    ///
    /// # Errors
    /// The wait until the next token.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if self.rate <= 0.0 {
            Err(Duration::from_secs(3600))
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// A configured key, live.
#[derive(Debug)]
pub struct Key {
    /// Its position in the keys file: what lifecycle records are scoped by.
    pub index: u16,
    /// Its name.
    pub name: String,
    bucket: Mutex<TokenBucket>,
    room: Arc<Semaphore>,
    /// Its share of the ledger's places, in places.
    pub places: usize,
}

/// Why a key's transaction was refused before admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyLimit {
    /// Over its rate: retry after this long.
    Rate(Duration),
    /// Its share of the ledger's places is taken (they free as its transactions
    /// end).
    Share,
}

impl Key {
    /// Charges one transaction at `now` and takes one of its places.
    ///
    /// # Errors
    /// Over its rate, or its share is full.
    pub fn admit(&self, now: Instant) -> Result<OwnedSemaphorePermit, KeyLimit> {
        let place = self
            .room
            .clone()
            .try_acquire_owned()
            .map_err(|_| KeyLimit::Share)?;
        let Ok(mut bucket) = self.bucket.lock() else {
            return Err(KeyLimit::Rate(Duration::from_secs(1)));
        };
        bucket.take(now).map_err(KeyLimit::Rate)?;
        Ok(place)
    }
}

/// Every configured key.
pub struct Keys {
    by_secret: HashMap<String, Arc<Key>>,
    keys: Vec<Arc<Key>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys (their names), never the secrets they are found by.
        f.debug_struct("Keys").field("keys", &self.keys).finish()
    }
}

/// Why a request was not let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No key presented.
    Missing,
    /// A key that is not configured.
    Unknown,
}

impl AuthError {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Unknown => "unknown",
        }
    }
}

impl Keys {
    /// The keys of `specs`, each holding at most its share of `max_tracked` places.
    ///
    /// # Errors
    /// A name or value that is not usable (named), or two keys with one secret.
    pub fn new(specs: &[KeySpec], max_tracked: usize) -> Result<Self, String> {
        let mut by_secret = HashMap::new();
        let mut keys = Vec::new();
        if specs.len() > usize::from(u16::MAX) {
            return Err("auth: more than 65535 keys".into());
        }
        for (i, s) in specs.iter().enumerate() {
            let name_ok = !s.name.is_empty()
                && s.name.len() <= 64
                && s.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return Err(format!(
                    "auth key #{}: name {:?} must be 1-64 of A-Z a-z 0-9 _ -",
                    i + 1,
                    s.name
                ));
            }
            if s.secret.len() < 16 {
                return Err(format!(
                    "auth key {:?}: secret shorter than 16 characters",
                    s.name
                ));
            }
            if !(s.tx_per_sec.is_finite() && s.tx_per_sec > 0.0) {
                return Err(format!("auth key {:?}: tx_per_sec must be > 0", s.name));
            }
            let share = s.queue_share.unwrap_or(1.0);
            if !(share > 0.0 && share <= 1.0) {
                return Err(format!(
                    "auth key {:?}: queue_share must be in (0, 1]",
                    s.name
                ));
            }
            let places = ((max_tracked as f64 * share).floor() as usize).max(1);
            let burst = s.burst.unwrap_or(s.tx_per_sec.ceil() as u32);
            let key = Arc::new(Key {
                index: i as u16,
                name: s.name.clone(),
                bucket: Mutex::new(TokenBucket::new(s.tx_per_sec, burst)),
                room: Arc::new(Semaphore::new(places)),
                places,
            });
            if keys.iter().any(|k: &Arc<Key>| k.name == key.name) {
                return Err(format!("auth key {:?}: the name is used twice", s.name));
            }
            if by_secret.insert(s.secret.clone(), key.clone()).is_some() {
                return Err(format!(
                    "auth key {:?}: its secret is another key's too",
                    s.name
                ));
            }
            keys.push(key);
        }
        Ok(Self { by_secret, keys })
    }

    /// The keys, in file order.
    pub fn all(&self) -> &[Arc<Key>] {
        &self.keys
    }

    /// The key a request presents: `Authorization: Bearer`, `x-api-key`, or the
    /// `api-key` query parameter.
    ///
    /// # Errors
    /// None presented, or not a configured one.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Arc<Key>, AuthError> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let header_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        let query_key = query.and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == QUERY_PARAMETER)
                .map(|(_, v)| v)
        });
        let presented = bearer.or(header_key).or(query_key).map(str::trim);
        match presented {
            None | Some("") => Err(AuthError::Missing),
            Some(secret) => self
                .by_secret
                .get(secret)
                .cloned()
                .ok_or(AuthError::Unknown),
        }
    }
}

/// The caller of a request, for the handlers: its key when keys are configured.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<Key>);

/// What the middleware needs.
#[derive(Clone, Debug)]
pub struct Gate {
    /// The keys.
    pub keys: Arc<Keys>,
    /// `afterburner_api_unauthorized_total{reason}`.
    pub unauthorized: prometheus::IntCounterVec,
}

/// Lets a request in with its [`Caller`], or answers 401 (JSON-RPC shaped, so
/// JSON-RPC clients show the message).
pub async fn require_key(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    match gate.keys.identify(request.headers(), request.uri().query()) {
        Ok(key) => {
            request.extensions_mut().insert(Caller(key));
            next.run(request).await
        }
        Err(why) => {
            gate.unauthorized.with_label_values(&[why.label()]).inc();
            let message = match why {
                AuthError::Missing => {
                    "Unauthorized: an API key is required (Authorization: Bearer <key>, \
                     x-api-key: <key>, or ?api-key=<key>)"
                }
                AuthError::Unknown => "Unauthorized: unknown API key",
            };
            let mut response = (
                StatusCode::UNAUTHORIZED,
                Json(json!({"jsonrpc": "2.0", "id": null,
                            "error": {"code": -32001, "message": message}})),
            )
                .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, secret: &str, rate: f64, burst: u32, share: f64) -> KeySpec {
        KeySpec {
            name: name.into(),
            secret: secret.into(),
            tx_per_sec: rate,
            burst: Some(burst),
            queue_share: Some(share),
        }
    }

    #[test]
    fn the_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Ok(()));
        }
        let wait = b.take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(b.take(t0 + Duration::from_millis(100)), Ok(()));
        // A long pause saves up the burst, not more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn keys_are_found_by_any_of_the_three_ways_and_never_printed() {
        let keys = Keys::new(
            &[spec("alice", "alice-secret-0123456789", 5.0, 5, 0.5)],
            100,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(keys.identify(&h, None).unwrap_err(), AuthError::Missing);
        h.insert("x-api-key", "nope-nope-nope-nope".parse().unwrap());
        assert_eq!(keys.identify(&h, None).unwrap_err(), AuthError::Unknown);
        h.insert("x-api-key", "alice-secret-0123456789".parse().unwrap());
        assert_eq!(keys.identify(&h, None).unwrap().name, "alice");
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            "Bearer alice-secret-0123456789".parse().unwrap(),
        );
        assert_eq!(keys.identify(&h, None).unwrap().name, "alice");
        let q = Some("a=1&api-key=alice-secret-0123456789");
        assert_eq!(keys.identify(&HeaderMap::new(), q).unwrap().name, "alice");
        let printed = format!(
            "{keys:?} {:?}",
            spec("a", "alice-secret-0123456789", 1.0, 1, 1.0)
        );
        assert!(!printed.contains("alice-secret"), "{printed}");
        assert_eq!(keys.all()[0].places, 50);
    }

    #[test]
    fn a_key_is_held_to_its_share_and_its_rate() {
        let keys = Keys::new(&[spec("bob", "bob-secret-0123456789", 1.0, 10, 0.02)], 100).unwrap();
        let bob = &keys.all()[0];
        let now = Instant::now();
        let a = bob.admit(now).unwrap();
        let _b = bob.admit(now).unwrap();
        assert_eq!(
            bob.admit(now).unwrap_err(),
            KeyLimit::Share,
            "2 places of 100"
        );
        drop(a);
        let _c = bob.admit(now).unwrap();
        let keys = Keys::new(
            &[spec("carol", "carol-secret-0123456789", 1.0, 1, 1.0)],
            100,
        )
        .unwrap();
        let carol = &keys.all()[0];
        let _p = carol.admit(now).unwrap();
        assert!(matches!(carol.admit(now), Err(KeyLimit::Rate(_))));
    }

    #[test]
    fn bad_keys_are_named_without_their_secret() {
        let e = Keys::new(&[spec("a b", "0123456789abcdef", 1.0, 1, 1.0)], 10).unwrap_err();
        assert!(e.contains("\"a b\""), "{e}");
        let e = Keys::new(&[spec("a", "short", 1.0, 1, 1.0)], 10).unwrap_err();
        assert!(e.contains("shorter") && !e.contains("short\""), "{e}");
        let e = Keys::new(
            &[
                spec("a", "0123456789abcdef", 1.0, 1, 1.0),
                spec("b", "0123456789abcdef", 1.0, 1, 1.0),
            ],
            10,
        )
        .unwrap_err();
        assert!(
            e.contains("another key's") && !e.contains("0123456789abcdef"),
            "{e}"
        );
        let e = Keys::new(&[spec("a", "0123456789abcdef", 1.0, 1, 1.5)], 10).unwrap_err();
        assert!(e.contains("queue_share"), "{e}");
    }
}
