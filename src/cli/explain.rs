//! `keygate explain`: the decision the proxy would take on one request, step
//! by step, without sending anything. It runs the proxy's own decision
//! ([`crate::proxy::decide`]): framing, host, path, credential, route,
//! permission — so what it says is what a live request gets.

use std::io::Read;
use std::path::PathBuf;

use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request, Uri};

use crate::error::Reject;
use crate::keys::KeyEntry;
use crate::proxy::{self, auth, Identity, Step};
use crate::state::Snapshot;

/// `keygate explain` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (default: $KEYGATE_CONFIG).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Decide as if this client had sent one of its keys.
    #[arg(long, conflicts_with = "key_from_stdin")]
    pub client: Option<String>,
    /// Read a key from standard input and send it in the key header.
    #[arg(long)]
    pub key_from_stdin: bool,
    /// A request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// The request method, e.g. GET.
    pub method: String,
    /// The request target: `/path?query`, or `http://host/path` to give the host.
    pub url: String,
}

/// Whom the request comes from.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// A client by id, as if it had sent a valid key.
    Client(&'a str),
    /// Whatever credential the request's headers and query carry.
    Credentials,
}

/// The outcome: each step's line, then the status and error code.
#[derive(Debug)]
pub struct Report {
    pub lines: Vec<String>,
    pub status: u16,
    /// `None` when the request would be forwarded.
    pub code: Option<&'static str>,
}

/// Print the decision; 0 when it would be forwarded, 1 when refused, 2 on a usage or configuration error.
pub fn run(args: Args) -> u8 {
    let super::Loaded { config, .. } = match super::load(args.config.clone()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let key = match args.key_from_stdin.then(read_key).transpose() {
        Ok(key) => key,
        Err(e) => return usage(&e),
    };
    let parts = match request(&args, key.as_deref(), &config.auth.header) {
        Ok(parts) => parts,
        Err(e) => return usage(&e),
    };
    // Building a snapshot may start background links (Redis): give it a runtime.
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => return usage(&format!("cannot start the runtime: {e}")),
    };
    let snap = match rt.block_on(async { Snapshot::build(config, None) }) {
        Ok(snap) => snap,
        Err(e) => return usage(&e.to_string()),
    };
    let caller = args.client.as_deref().map_or(Caller::Credentials, Caller::Client);
    let report = explain(&snap, &parts, caller);
    for line in &report.lines {
        println!("{line}");
    }
    match report.code {
        None => super::OK,
        Some(_) => super::RUNTIME,
    }
}

fn usage(message: &str) -> u8 {
    eprintln!("error: {message}");
    super::USAGE
}

/// One key from standard input, one trailing newline ignored (as `keygate hash`).
fn read_key() -> Result<String, String> {
    let mut key = String::new();
    std::io::stdin().read_to_string(&mut key).map_err(|e| format!("cannot read the key: {e}"))?;
    let key = key.strip_suffix('\n').unwrap_or(&key);
    Ok(key.strip_suffix('\r').unwrap_or(key).to_string())
}

/// The request head `args` describe; a key from stdin goes in `key_header`.
pub fn request(args: &Args, key: Option<&str>, key_header: &HeaderName) -> Result<Parts, String> {
    let method = Method::from_bytes(args.method.as_bytes()).map_err(|_| format!("bad method {:?}", args.method))?;
    let uri: Uri = args.url.parse().map_err(|e| format!("bad URL {:?}: {e}", args.url))?;
    let mut builder = Request::builder().method(method).uri(uri);
    let mut has_host = false;
    for h in &args.headers {
        let (name, value) = h.split_once(':').ok_or_else(|| format!("--header {h:?} is not 'Name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| format!("bad header name in {h:?}"))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| format!("bad header value for {name}"))?;
        has_host |= name == http::header::HOST;
        builder = builder.header(name, value);
    }
    if let Some(key) = key {
        let value = HeaderValue::from_str(key).map_err(|_| "the key is not a valid header value".to_string())?;
        builder = builder.header(key_header, value);
    }
    if !has_host && !args.url.contains("://") {
        // An HTTP/1.1 request needs one; a bare path names no particular host.
        builder = builder.header(http::header::HOST, "localhost");
    }
    let (parts, ()) = builder.body(()).map_err(|e| e.to_string())?.into_parts();
    Ok(parts)
}

/// Run the proxy's decision on `parts` and describe each step.
pub fn explain(snap: &Snapshot, parts: &Parts, caller: Caller<'_>) -> Report {
    let mut lines = vec![format!("request     {} {}", parts.method, parts.uri)];
    let now = crate::keys::unix_now();
    let identify = |p: &Parts| match caller {
        Caller::Client(id) => by_id(snap, id),
        // No connection: a client bound to certificate subjects cannot be checked here.
        Caller::Credentials => credentials(snap, p, now),
    };
    let result = proxy::decide(parts, snap, identify, |step| lines.push(describe(snap, step)));
    let (status, code) = match result {
        Ok(decided) => {
            let route = snap.router.get(decided.route);
            let upstream = route.and_then(|r| snap.upstreams.get(r.upstream));
            let crate::config::Rate { per_second, burst } = decided.client.limiter.rate();
            lines.push(format!("permission  allowed: {} may call this route", decided.client.id.0));
            lines.push(format!(
                "forward     {} {} to upstream {} (rate {per_second}/s, burst {burst}, not spent by explain)",
                parts.method,
                decided.path,
                upstream.map_or("?", |u| &*u.name),
            ));
            (200, None)
        }
        Err(reject) => {
            let (status, code, _) = reject.parts();
            lines.push(format!("refused     {}", refusal(reject, snap)));
            if proxy::grpc::is_grpc(&parts.headers) {
                let grpc = reject.grpc_status();
                lines.push(format!("grpc        answered as HTTP 200, trailers-only, grpc-status {grpc}"));
            }
            (status.as_u16(), Some(code))
        }
    };
    match code {
        Some(code) => lines.push(format!("verdict     {status} {code}")),
        None => lines.push("verdict     forwarded (the upstream answers)".into()),
    }
    Report { lines, status, code }
}

fn by_id<'s>(snap: &'s Snapshot, id: &str) -> Result<Identity<'s>, Reject> {
    let index = snap.clients.iter().position(|c| &*c.id.0 == id).ok_or(Reject::InvalidKey)?;
    let client = snap.clients.get(index).ok_or(Reject::InvalidKey)?;
    let client_index = u32::try_from(index).map_err(|_| Reject::InvalidKey)?;
    let entry = KeyEntry { client: client_index, index: u32::MAX, not_before: None, expires: None };
    Ok((client, entry, auth::Copies::default(), None))
}

fn credentials<'s>(snap: &'s Snapshot, parts: &Parts, now: i64) -> Result<Identity<'s>, Reject> {
    let presented = auth::extract(&parts.headers, parts.uri.query(), &snap.config.auth)?;
    let (entry, grant) = crate::proxy::identify(snap, presented.credential, now)?;
    let client = snap.clients.get(entry.client as usize).ok_or(Reject::InvalidKey)?;
    Ok((client, entry, presented.copies, grant))
}

fn describe(snap: &Snapshot, step: Step<'_>) -> String {
    match step {
        Step::Head { host, path } => format!(
            "head        ok: framing and headers; host {}; normalised path {path}",
            host.map_or("(none)".into(), |h| format!("{h:?}"))
        ),
        Step::Identified { client, grant: Some(g), .. } => {
            let issuer = snap.jwt.as_ref().and_then(|j| j.log_name(g.issuer)).map_or("jwt".into(), |n| n.0);
            format!("credential  token ({issuer}) of client {}; scopes [{}]", client.id.0, g.scopes.join(" "))
        }
        Step::Identified { client, entry, .. } => match snap.key_names.get(entry.index as usize) {
            Some(key) => format!("credential  key {} of client {}", key.0, client.id.0),
            None => format!("credential  client {} (given with --client)", client.id.0),
        },
        Step::Route { index } => match snap.router.get(index) {
            Some(r) => {
                let methods = r
                    .methods
                    .as_ref()
                    .map_or("any method".into(), |m| m.iter().map(Method::as_str).collect::<Vec<_>>().join(", "));
                let host = r.host.as_deref().map_or(String::new(), |h| format!(", host {h}"));
                format!("route       {} (prefix {}, {methods}{host})", r.name, r.path)
            }
            None => format!("route       #{index}"),
        },
    }
}

/// Why the request is refused, in the words of the step that refused it.
fn refusal(reject: Reject, snap: &Snapshot) -> String {
    let detail = match reject {
        Reject::BadRequest => "the request head is refused: framing, host or path (see the README's routing rules)",
        Reject::MissingKey => "no key in the key header, Authorization or the query parameter",
        Reject::InvalidKey => "the key (or --client) names no valid key of any client",
        Reject::NoRoute => "no route matches this path and host",
        Reject::MethodNotAllowed { allow } => {
            let allowed = snap.router.allow(allow).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            return format!("the route's prefix does not take this method (Allow: {allowed})");
        }
        Reject::Forbidden => "the client may not call this route (or a valid token names no client)",
        Reject::InsufficientScope { route } => {
            let scopes = snap.router.get(route as usize).map(|r| r.scopes.join(" ")).unwrap_or_default();
            return format!("the token lacks a scope of the route (requires: {scopes})");
        }
        other => other.parts().2,
    };
    detail.to_string()
}
