//! The runtime snapshot: everything a request needs, built once per
//! configuration and swapped atomically on reload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use http::HeaderValue;
use prometheus_client::metrics::gauge::Gauge;
use rustls::ServerConfig;

use crate::config::{Allowed, Client, Config, Limits, Store};
use crate::keys::{KeyEntry, KeyTable};
use crate::limit::redis::{Link, RedisStore};
use crate::limit::{Counted, Fallback, Limiter, LocalLimiter, Standby};
use crate::metrics::{KeyLabels, Metrics, Name};
use crate::proxy::in_flight::Slots;
use crate::proxy::route::Router;
use crate::proxy::throttle::FailureThrottle;
use crate::proxy::tunnel::{Credential, Proof, Tunnels};
use crate::tls::{self, TlsError};
use crate::upstream::Upstream;

/// A client as the request path sees it.
#[derive(Debug)]
pub struct ClientState {
    pub id: Name,
    /// The id as the identity header's value.
    pub header_value: HeaderValue,
    pub allowed: Allowed,
    pub limiter: Arc<Limiter>,
    pub tls_subjects: Vec<String>,
    /// Its requests in flight (carried over a reload) and their cap.
    pub in_flight: Arc<Slots>,
    pub max_in_flight: usize,
}

impl ClientState {
    /// Whether this client may call route `index`.
    pub fn may_call(&self, index: usize) -> bool {
        match &self.allowed {
            Allowed::All => true,
            Allowed::Only(list) => list.binary_search(&index).is_ok(),
        }
    }
}

/// One immutable configuration, ready to serve.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub keys: KeyTable,
    /// Fingerprint of each key, by [`KeyEntry::index`].
    pub key_names: Vec<Name>,
    pub router: Router,
    pub clients: Vec<ClientState>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Route names, by route index.
    pub route_names: Vec<Name>,
    pub tls: Option<Arc<ServerConfig>>,
    /// Each key's last-used gauge, by [`KeyEntry::index`], set once published:
    /// the request path updates it without a label lookup.
    pub key_last_used: OnceLock<Vec<Gauge<i64, AtomicI64>>>,
    /// Each key's label as a header value, by [`KeyEntry::index`]; empty
    /// unless `auth.credential_header` is set.
    pub key_header_values: Vec<HeaderValue>,
    /// The connection to Redis, when `[redis]` is configured.
    pub redis: Option<Arc<Link>>,
    /// Token verification, when `[[jwt]]` is configured.
    pub jwt: Option<crate::jwt::Verifier>,
}

impl Snapshot {
    /// Build a snapshot; rate-limit state of clients whose rate is unchanged
    /// is carried over from `previous`.
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, TlsError> {
        let before_tls = previous.and_then(|p| Some((p.config.listen.tls.as_ref()?, p.tls.as_deref()?)));
        let tls = config.listen.tls.as_ref().map(|files| tls::server_config(files, before_tls)).transpose()?;
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let kept = previous.and_then(|p| p.upstreams.iter().find(|o| *o.name == *u.name));
                Upstream::new(u, kept.map(|k| &**k)).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut keys = KeyTable::default();
        let mut key_names = Vec::new();
        // By id, once: a lookup per client would be quadratic in large configurations.
        let before: HashMap<&str, &ClientState> =
            previous.iter().flat_map(|p| &p.clients).map(|c| (&*c.id.0, c)).collect();
        let redis = link_for(&config.limits, previous);
        let clients = config
            .clients
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                for k in &c.keys {
                    let entry = KeyEntry {
                        client: u32::try_from(ci).unwrap_or(u32::MAX),
                        index: u32::try_from(key_names.len()).unwrap_or(u32::MAX),
                        not_before: k.not_before,
                        expires: k.expires,
                    };
                    keys.insert(k.digest, entry);
                    key_names.push(Name::new(&k.label()));
                }
                ClientState {
                    id: Name::new(&c.id),
                    header_value: HeaderValue::from_str(&c.id).unwrap_or(HeaderValue::from_static("invalid")),
                    allowed: c.allowed.clone(),
                    limiter: limiter_for(c, &config.limits, redis.as_ref(), before.get(c.id.as_str()).copied()),
                    tls_subjects: c.tls_subjects.clone(),
                    in_flight: before.get(c.id.as_str()).map_or_else(Default::default, |b| b.in_flight.clone()),
                    max_in_flight: c.max_in_flight.unwrap_or(config.listen.max_in_flight_per_client),
                }
            })
            .collect();
        let key_header_values = match config.auth.credential_header {
            Some(_) => {
                key_names.iter().map(|n| HeaderValue::from_str(&n.0).unwrap_or(HeaderValue::from_static("-"))).collect()
            }
            None => Vec::new(),
        };
        Ok(Snapshot {
            jwt: crate::jwt::Verifier::new(&config, previous.and_then(|p| p.jwt.as_ref())),
            key_header_values,
            router: Router::new(&config.routes),
            route_names: config.routes.iter().map(|r| Name::new(&r.name)).collect(),
            keys,
            key_names,
            clients,
            upstreams,
            tls,
            config,
            key_last_used: OnceLock::new(),
            redis,
        })
    }

    /// Export each key's expiry time, replacing what an older snapshot set,
    /// and a last-used time of 0 for keys not used yet (so unused keys show).
    pub fn publish_key_metrics(&self, metrics: &Metrics) {
        metrics.key_expiry.clear();
        let mut gauges = Vec::with_capacity(self.key_names.len());
        for (labels, expires) in self.key_labels() {
            if let Some(expires) = expires {
                metrics.key_expiry.get_or_create(&labels).set(expires);
            }
            gauges.push(metrics.key_last_used.get_or_create(&labels).clone());
        }
        // A snapshot publishes once; a second call keeps the first handles.
        let _ = self.key_last_used.set(gauges);
    }

    /// Whether a tunnel opened with `c` may stay open: its key still belongs
    /// to the same client and is valid at `now` (or its token's issuer is
    /// still trusted, its scopes still cover the route and it has not
    /// expired), that client may still call the route of that name, and its
    /// certificate binding (mTLS) still holds.
    pub fn allows_tunnel(&self, c: &Credential, now: i64) -> bool {
        let route = self.route_names.iter().position(|r| *r == c.route);
        let (client, valid) = match &c.proof {
            Proof::Key(digest) => {
                let Some(entry) = self.keys.get(digest) else { return false };
                (self.clients.get(entry.client as usize), entry.valid_at(now))
            }
            Proof::Token { issuer, exp, scopes } => {
                let trusted = self.jwt.as_ref().is_some_and(|j| j.trusts(issuer));
                let required = route.and_then(|i| self.router.get(i)).map_or(&[][..], |r| &r.scopes[..]);
                let scoped = required.iter().all(|s| scopes.contains(s));
                (self.clients.iter().find(|cl| cl.id == c.client), trusted && scoped && now < *exp)
            }
        };
        let Some(client) = client else { return false };
        let bound = client.tls_subjects.is_empty()
            || c.subject.as_ref().is_some_and(|s| client.tls_subjects.iter().any(|p| tls::subject_matches(s, p)));
        client.id == c.client && valid && route.is_some_and(|i| client.may_call(i)) && bound
    }

    /// Each key's client and fingerprint, with its expiry.
    fn key_labels(&self) -> impl Iterator<Item = (KeyLabels, Option<i64>)> + '_ {
        self.clients.iter().zip(&self.config.clients).flat_map(|(client, c)| {
            c.keys.iter().map(|k| {
                let labels = KeyLabels { client: client.id.clone(), key: Name::new(&k.label()) };
                (labels, k.expires)
            })
        })
    }
}

/// The client's limiter: kept from its previous state while its local state
/// is worth keeping (same rate and quota), else built afresh for where it is counted.
fn limiter_for(c: &Client, limits: &Limits, link: Option<&Arc<Link>>, previous: Option<&ClientState>) -> Arc<Limiter> {
    let shared = link.is_some() && (limits.store == Store::Redis || c.quota.is_some());
    let kept = previous
        .map(|pc| pc.limiter.clone())
        .filter(|l| !shared && l.is_local() && l.rate() == c.rate && l.quota() == c.quota);
    kept.unwrap_or_else(|| Arc::new(new_limiter(c, limits, link)))
}

fn new_limiter(c: &Client, limits: &Limits, link: Option<&Arc<Link>>) -> Limiter {
    let shares_rate = limits.store == Store::Redis;
    match (link, c.quota) {
        (Some(link), quota) if shares_rate || quota.is_some() => {
            let settings = link.settings();
            let store = RedisStore::new(&settings.key_prefix, &c.id, c.rate, shares_rate, quota, limits.clock_offset);
            let local_rate = (!shares_rate).then(|| LocalLimiter::new(c.rate));
            Limiter::Shared(Fallback::new(link.clone(), store, local_rate, Standby::new(settings.on_error, c.rate)))
        }
        (_, Some(quota)) => Limiter::Counted(Counted::new(c.rate, quota, limits.clock_offset)),
        (_, None) => Limiter::Local(LocalLimiter::new(c.rate)),
    }
}

/// The link to Redis: the previous one while its settings are unchanged.
fn link_for(limits: &Limits, previous: Option<&Snapshot>) -> Option<Arc<Link>> {
    let settings = limits.redis.as_ref()?;
    let same = previous.and_then(|p| p.redis.clone()).filter(|l| l.settings() == settings);
    same.or_else(|| Link::start(settings))
}

/// Makes request ids: a random per-process prefix and a counter, so no
/// random number is drawn per request.
#[derive(Debug)]
pub struct RequestIds {
    prefix: String,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut seed = [0u8; 6];
        let _ = getrandom::fill(&mut seed);
        RequestIds { prefix: hex::encode(seed), counter: AtomicU64::new(0) }
    }
}

impl RequestIds {
    /// The next id.
    pub fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // `{prefix}-{n:08x}` by hand: fmt machinery cost 900 instructions here.
        let mut buf = [0u8; 48];
        let prefix = self.prefix.as_bytes();
        let digits = (16 - n.leading_zeros() as usize / 4).max(8);
        let len = prefix.len() + 1 + digits;
        if let Some(out) = buf.get_mut(..len) {
            let (head, tail) = out.split_at_mut(prefix.len());
            head.copy_from_slice(prefix);
            if let Some((dash, hex)) = tail.split_first_mut() {
                *dash = b'-';
                for (i, d) in hex.iter_mut().rev().enumerate() {
                    *d = HEX.get(((n >> (4 * i)) & 0xf) as usize).copied().unwrap_or(b'0');
                }
            }
        }
        buf.get(..len).and_then(|id| HeaderValue::from_bytes(id).ok()).unwrap_or(HeaderValue::from_static("0"))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// State shared by every connection for the life of the process.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub throttle: FailureThrottle,
    pub request_ids: RequestIds,
    /// Set once the listeners are bound; cleared when draining starts.
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    /// Held for a whole reload (read, build, swap), so two reloads at once
    /// (a signal and a file change) cannot swap in an older file last.
    pub reloading: Mutex<()>,
    /// Open tunnels, closed by a reload that takes their credential away.
    pub tunnels: Arc<Tunnels>,
    /// Upstream requests in flight over all clients (`listen.max_in_flight`).
    pub in_flight: Arc<Slots>,
}

impl Shared {
    /// Shared state serving `snapshot`.
    pub fn new(snapshot: Snapshot) -> Shared {
        let throttle = FailureThrottle::default();
        let mut metrics = Metrics::new();
        metrics.register_throttle(&throttle);
        let metrics = Arc::new(metrics);
        snapshot.publish_key_metrics(&metrics);
        snapshot.jwt.iter().for_each(|j| j.publish(&metrics.jwt));
        crate::upstream::report::publish_metrics(&snapshot.upstreams, None, &metrics);
        snapshot.redis.iter().for_each(|link| link.set_metrics(&metrics.limiter));
        Shared {
            tunnels: Arc::new(Tunnels::new(&metrics)),
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            throttle,
            request_ids: RequestIds::default(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            reloading: Mutex::new(()),
            in_flight: Arc::default(),
        }
    }

    /// Build a snapshot from `config` and swap it in; returns the one replaced.
    pub fn replace(&self, config: Config) -> Result<Arc<Snapshot>, TlsError> {
        let current = self.snapshot.load_full();
        let next = Snapshot::build(config, Some(&current))?;
        let kept: std::collections::HashSet<KeyLabels> = next.key_labels().map(|(l, _)| l).collect();
        for (gone, _) in current.key_labels().filter(|(l, _)| !kept.contains(l)) {
            self.metrics.key_last_used.remove(&gone);
        }
        next.publish_key_metrics(&self.metrics);
        next.jwt.iter().for_each(|j| j.publish(&self.metrics.jwt));
        crate::upstream::report::publish_metrics(&next.upstreams, Some(&current.upstreams), &self.metrics);
        next.redis.iter().for_each(|link| link.set_metrics(&self.metrics.limiter));
        let next = Arc::new(next);
        self.snapshot.store(next.clone());
        let now = crate::keys::unix_now();
        let closed = self.tunnels.close_unless(|c| next.allows_tunnel(c, now));
        if closed > 0 {
            tracing::info!(target: "keygate::audit", tunnels = closed, "closing tunnels whose key or route permission was removed");
        }
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_prefix_dash_counter_and_distinct() {
        let ids = RequestIds::default();
        let a = ids.next();
        let b = ids.next();
        let a = a.to_str().unwrap();
        let (prefix, n) = a.split_once('-').unwrap();
        assert_eq!(prefix.len(), 12);
        assert!(prefix.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(n, "00000000");
        assert_eq!(b.to_str().unwrap(), format!("{prefix}-00000001"));
        ids.counter.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(ids.next().to_str().unwrap(), format!("{prefix}-ffffffffffffffff"));
    }
}
