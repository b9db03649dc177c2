//! A tunnel (WebSocket upgrade) opened with a Bearer token is checked again
//! on every reload like one opened with a key: it stays open through a
//! reload that leaves its issuer, client, route and scopes alone, and closes
//! when the reload takes one of them away.

mod support;

use std::time::Duration;

use support::jwks::{claims, jwks, Signer};
use support::ws::{closed_within, echoes};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;

const ISS: &str = "https://auth.tunnels.test";
const AUD: &str = "chat-api";
const LIMIT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<TcpStream>;

/// Route `chat` (`/ws`, scope `chat`) to `up`; client `alice` takes tokens
/// of the issuer whose keys are in `jwks_file`.
fn config(up: std::net::SocketAddr, jwks_file: &std::path::Path) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:0"
shutdown_grace = "1s"

[rate_limit]
per_second = 100000
burst = 100000

[upstreams.main]
servers = ["http://{up}"]

[[routes]]
name = "chat"
path = "/ws"
upstream = "main"
scopes = ["chat"]

[clients.alice]
routes = ["chat"]

[[jwt]]
issuer = "{ISS}"
audiences = ["{AUD}"]
algorithms = ["ES256"]
jwks_file = "{file}"
"#,
        file = jwks_file.display()
    )
}

async fn open(addr: std::net::SocketAddr, token: &str) -> Ws {
    let mut req = format!("ws://{addr}/ws").into_client_request().expect("request");
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header value"));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let opened = tokio::time::timeout(LIMIT, tokio_tungstenite::client_async(req, tcp)).await.expect("in time");
    opened.expect("the token's tunnel").0
}

#[tokio::test]
async fn a_token_tunnel_survives_an_unrelated_reload_and_closes_when_its_grant_goes() {
    let up = Upstream::start().await;
    let signer = Signer::ec("t1");
    let dir = tempdir();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&signer])).expect("jwks");
    let base = config(up.addr, &file);
    let mut c = claims(ISS, AUD, "alice", 300);
    c["scope"] = serde_json::json!("chat");
    let token = signer.sign(&c);
    // (change, whether the token's tunnel must close)
    let cases = [
        ("unrelated change", base.replace("per_second = 100000", "per_second = 99999"), false),
        ("issuer removed", base.replace(ISS, "https://other.test"), true),
        ("scope added to the route", base.replace("scopes = [\"chat\"]", "scopes = [\"chat\", \"admin\"]"), true),
        ("client removed", base.replace("[clients.alice]", "[clients.carol]"), true),
        ("route permission removed", base.replace("routes = [\"chat\"]", "routes = []"), true),
    ];
    for (what, changed, must_close) in cases {
        assert_ne!(changed, base, "{what}: the change did not apply");
        let kg = Keygate::start(&base).await;
        let mut ws = open(kg.addr, &token).await;
        assert!(echoes(&mut ws, "kept").await, "{what}: the tunnel does not carry messages");
        std::fs::write(&kg.config_path, &changed).expect("write config");
        let shared = kg.handle.as_ref().expect("running").shared.clone();
        assert!(keygate::reload::reload(&shared, Some(&kg.config_path)), "{what}: reload refused");
        if must_close {
            assert!(closed_within(&mut ws, LIMIT).await.is_some(), "{what}: the token's tunnel survived the reload");
        } else {
            assert!(echoes(&mut ws, "kept").await, "{what}: the token's tunnel was closed");
        }
        drop(ws);
        kg.stop().await;
    }
}
