//! The identity presented to leaders, and how it changes while running: the
//! configured keypair file is watched (a rewrite or a symlink swap counts), SIGHUP
//! re-reads it, and an admin JSON-RPC on a unix socket sets it from a path or from
//! bytes (`setIdentity`, `setIdentityFromBytes`, `resetIdentity`, `getIdentity`,
//! after yellowstone-jet's admin API). The forwarder, which owns the engine, makes
//! the switch ([`crate::service::Service::set_identity`]); a bad keypair is refused
//! with a clear error and the old identity stays. Key bytes are never logged: errors
//! name the file, never its content.

use std::{
    hash::{Hash as _, Hasher as _},
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use afterburner_quic::Identity;
use arc_swap::ArcSwap;
use serde_json::{Value, json};
use solana_sdk::signature::Keypair;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use crate::service::Service;

/// The identity in use, shared by the forwarder (which switches it), the front half
/// (`getIdentity`) and engine restarts.
pub type SharedIdentity = Arc<ArcSwap<Identity>>;

/// What asked for a switch (the `source` label of
/// `afterburner_identity_switches_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum Source {
    /// The watched keypair file changed.
    File,
    /// SIGHUP.
    Sighup,
    /// The admin socket.
    Admin,
}

impl Source {
    /// The metric label.
    pub fn label(self) -> &'static str {
        self.into()
    }
}

/// Parses a keypair file's content (a JSON array of 64 numbers). The error never
/// quotes the content.
///
/// # Errors
/// Not a keypair.
pub fn parse_keypair(bytes: &[u8]) -> Result<Keypair, String> {
    let numbers: Vec<u8> = serde_json::from_slice(bytes)
        .map_err(|_| "not a keypair: expected a JSON array of 64 numbers".to_string())?;
    keypair_from_bytes(&numbers)
}

/// A keypair from its 64 bytes (secret then public half, as Solana keypair files
/// hold them).
///
/// # Errors
/// Not 64 bytes, or the halves do not match.
pub fn keypair_from_bytes(bytes: &[u8]) -> Result<Keypair, String> {
    if bytes.len() != 64 {
        return Err(format!("not a keypair: {} bytes, expected 64", bytes.len()));
    }
    Keypair::try_from(bytes)
        .map_err(|_| "not a keypair: the public half does not match the secret half".to_string())
}

/// Reads the keypair file at `path` (following symlinks).
///
/// # Errors
/// Unreadable, or not a keypair; the message names the file.
pub async fn read_keypair(path: &Path) -> Result<Keypair, String> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse_keypair(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Re-reads `path` and switches to it (`source`): SIGHUP, and the watcher.
///
/// # Errors
/// As [`read_keypair`] and [`Service::set_identity`].
pub async fn reload(service: &Service, path: &Path, source: Source) -> Result<String, String> {
    let keypair = read_keypair(path).await?;
    service
        .set_identity(keypair, source)
        .await
        .map(|p| p.to_string())
}

/// Watches `path` every `every` until `stop`: when its content changes (a rewrite,
/// or a symlink pointed elsewhere), switches to it. A file that is not a keypair is
/// reported once per distinct content and the old identity stays.
pub async fn watch_file(
    service: Arc<Service>,
    path: PathBuf,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // A digest, not the bytes: no second copy of the secret stays in memory.
    let digest = |b: &[u8]| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        b.hash(&mut h);
        h.finish()
    };
    let mut last = tokio::fs::read(&path).await.ok().map(|b| digest(&b));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
        let Ok(bytes) = tokio::fs::read(&path).await else {
            // Mid-swap, or gone: keep the identity; the next look may find it.
            continue;
        };
        let d = digest(&bytes);
        if last == Some(d) {
            continue;
        }
        last = Some(d);
        let result = match parse_keypair(&bytes) {
            Ok(keypair) => service
                .set_identity(keypair, Source::File)
                .await
                .map(|_| ()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        };
        if let Err(e) = result {
            service.count_identity_error(Source::File);
            tracing::error!(error = %e, "identity file changed but cannot be used; keeping the current identity");
        }
    }
}

/// Serves the admin JSON-RPC on the unix socket `socket` until `stop`: one JSON
/// object per line in, one per line out. The socket is created mode 0600, and a
/// peer whose user is neither ours nor root is refused (SO_PEERCRED).
/// `configured` is the identity file `resetIdentity` goes back to.
///
/// # Errors
/// The socket cannot be created.
pub fn serve_admin(
    service: Arc<Service>,
    socket: &Path,
    configured: Option<PathBuf>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<tokio::task::JoinHandle<()>> {
    match std::fs::symlink_metadata(socket) {
        // A socket left by a previous run: replace it. Anything else: refuse.
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(socket)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", socket.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let path = socket.to_path_buf();
    Ok(tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
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
            if !peer_allowed(&stream) {
                continue;
            }
            let service = service.clone();
            let configured = configured.clone();
            tokio::spawn(async move {
                if let Err(e) = admin_connection(stream, &service, configured.as_deref()).await {
                    tracing::debug!(error = %e, "admin connection ended");
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    }))
}

/// Whether the peer runs as our user or root.
fn peer_allowed(stream: &UnixStream) -> bool {
    // /proc/self belongs to the process's effective user.
    let ours = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let Ok(ours) = ours else {
        tracing::warn!("admin socket: cannot tell our own user; refused");
        return false;
    };
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == ours || cred.uid() == 0 => true,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                "admin socket: refused a peer of another user"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin socket: no peer credentials; refused");
            false
        }
    }
}

/// Answers requests on one admin connection, a line each, until it closes.
async fn admin_connection(
    stream: UnixStream,
    service: &Service,
    configured: Option<&Path>,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let answer = admin_call(&line, service, configured).await;
        let mut out = answer.to_string();
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
    }
    Ok(())
}

/// One admin JSON-RPC call.
async fn admin_call(line: &str, service: &Service, configured: Option<&Path>) -> Value {
    let Ok(request) = serde_json::from_str::<Value>(line) else {
        return error(Value::Null, -32700, "Parse error".into());
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let params = request.get("params").cloned().unwrap_or(Value::Null);
    let first = params.get(0).cloned().unwrap_or(Value::Null);
    let result = match request.get("method").and_then(Value::as_str) {
        Some("getIdentity") => Ok(service.identity().to_string()),
        Some("setIdentity") => match first.as_str() {
            Some(path) => match read_keypair(Path::new(path)).await {
                Ok(keypair) => service
                    .set_identity(keypair, Source::Admin)
                    .await
                    .map(|p| p.to_string()),
                Err(e) => Err(e),
            },
            None => return error(id, -32602, "params: [keypair file path]".into()),
        },
        Some("setIdentityFromBytes") => {
            let bytes: Option<Vec<u8>> = serde_json::from_value(first).ok();
            match bytes.map(|b| keypair_from_bytes(&b)) {
                Some(Ok(keypair)) => service
                    .set_identity(keypair, Source::Admin)
                    .await
                    .map(|p| p.to_string()),
                Some(Err(e)) => Err(e),
                None => return error(id, -32602, "params: [[64 numbers]]".into()),
            }
        }
        Some("resetIdentity") => match configured {
            Some(path) => reload(service, path, Source::Admin).await,
            None => Err("no identity file is configured".into()),
        },
        Some("getLeaderPolicy") => {
            return match service.leader_policy() {
                Some(p) => json!({"jsonrpc": "2.0", "id": id, "result": policy_json(&p)}),
                None => error(id, -32000, "static leaders have no leader policy".into()),
            };
        }
        Some("setLeaderPolicy") => {
            let parsed = serde_json::from_value::<crate::config::LeadersSection>(first)
                .map_err(|e| e.to_string())
                .and_then(|section| section.policy().map_err(|e| format!("{e:#}")));
            return match parsed.and_then(|p| service.set_leader_policy(p, "admin")) {
                Ok(()) => match service.leader_policy() {
                    Some(p) => json!({"jsonrpc": "2.0", "id": id, "result": policy_json(&p)}),
                    None => error(id, -32000, "static leaders have no leader policy".into()),
                },
                Err(e) => error(id, -32000, e),
            };
        }
        Some("reloadLeaderPolicy") => {
            return match service.reload_leader_policy("admin") {
                Ok(p) => json!({"jsonrpc": "2.0", "id": id, "result": policy_json(&p)}),
                Err(e) => error(id, -32000, e),
            };
        }
        _ => return error(id, -32601, "Method not found".into()),
    };
    match result {
        Ok(pubkey) => json!({"jsonrpc": "2.0", "id": id, "result": {"identity": pubkey}}),
        Err(e) => {
            service.count_identity_error(Source::Admin);
            error(id, -32000, e)
        }
    }
}

/// A policy as the admin socket shows it: the `[leaders]` keys, sorted.
fn policy_json(p: &leader_schedule::LeaderPolicy) -> Value {
    let sorted = |set: &std::collections::HashSet<solana_sdk::pubkey::Pubkey>| {
        let mut v: Vec<String> = set.iter().map(ToString::to_string).collect();
        v.sort();
        v
    };
    let overrides: std::collections::BTreeMap<String, String> = p
        .overrides
        .iter()
        .map(|(k, a)| (k.to_string(), a.to_string()))
        .collect();
    json!({"deny": sorted(&p.deny), "allow": sorted(&p.allow), "tpu_overrides": overrides})
}

fn error(id: Value, code: i64, message: String) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

#[cfg(test)]
mod tests {
    use solana_sdk::signer::Signer as _;

    use super::*;

    #[test]
    fn keypair_files_parse_and_bad_ones_say_why_without_quoting() {
        let kp = Keypair::new();
        let text = serde_json::to_vec(&kp.to_bytes().to_vec()).unwrap_or_default();
        assert_eq!(parse_keypair(&text).map(|k| k.pubkey()), Ok(kp.pubkey()));
        let short = parse_keypair(b"[1,2,3]").err().unwrap_or_default();
        assert!(short.contains("3 bytes, expected 64"), "{short}");
        let garbage = parse_keypair(b"secret stuff").err().unwrap_or_default();
        assert!(!garbage.contains("secret"), "{garbage}");
        let mut mismatched = kp.to_bytes();
        mismatched[40] ^= 1;
        assert!(keypair_from_bytes(&mismatched).is_err());
    }
}
