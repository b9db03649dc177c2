//! The start-up summary on stdout: a few lines of text, or with
//! `KEYGATE_LOG_FORMAT=json` one JSON event holding the same facts.

use std::net::SocketAddr;

use serde_json::json;

use crate::config::Config;

/// What the summary says, taken from the configuration before it moves into
/// the server; the bound addresses are given when printing.
#[derive(Debug, Clone)]
pub struct Summary {
    https: bool,
    tls: String,
    config: Option<String>,
    counts: String,
    clients: usize,
    keys: usize,
    routes: usize,
    upstreams: usize,
    warnings: Vec<String>,
}

impl Summary {
    /// The facts of `config`.
    pub fn of(config: &Config) -> Summary {
        Summary {
            https: config.listen.tls.is_some(),
            tls: tls_line(config),
            config: config.source.as_ref().map(|p| p.display().to_string()),
            counts: config.counts(),
            clients: config.clients.len(),
            keys: config.clients.iter().map(|c| c.keys.len()).sum(),
            routes: config.routes.len(),
            upstreams: config.upstreams.len(),
            warnings: config.warnings.iter().map(ToString::to_string).collect(),
        }
    }

    fn listen(&self, addr: SocketAddr) -> String {
        format!("{}://{addr}", if self.https { "https" } else { "http" })
    }

    /// The one-screen text form.
    pub fn text(&self, addr: SocketAddr, admin: Option<SocketAddr>) -> String {
        let mut s = format!("keygate {}\n", env!("CARGO_PKG_VERSION"));
        s += &format!("  listening on {}\n", self.listen(addr));
        s += &format!("  tls:        {}\n", self.tls);
        s += &format!("  admin:      {}\n", admin.map_or("off".into(), |a| a.to_string()));
        s += &format!("  config:     {}\n", self.config.as_deref().unwrap_or("environment only"));
        s += &format!("  {}", self.counts);
        for w in &self.warnings {
            s += &format!("\n  warning: {w}");
        }
        s
    }

    /// One JSON event (one line), shaped like the JSON log's events: `admin`
    /// and `config` are `null` when off / when configured from the environment only.
    pub fn json(&self, addr: SocketAddr, admin: Option<SocketAddr>) -> String {
        json!({
            "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "level": "INFO",
            "target": "keygate::startup",
            "message": "listening",
            "version": env!("CARGO_PKG_VERSION"),
            "listen": self.listen(addr),
            "tls": self.tls,
            "admin": admin.map(|a| a.to_string()),
            "config": self.config,
            "clients": self.clients,
            "keys": self.keys,
            "routes": self.routes,
            "upstreams": self.upstreams,
            "warnings": self.warnings,
        })
        .to_string()
    }
}

fn tls_line(config: &Config) -> String {
    match &config.listen.tls {
        None => "off (plain HTTP)".into(),
        Some(t) if t.client_ca.is_some() => {
            format!("on, client certificates required ({})", t.cert.display())
        }
        Some(t) => format!("on ({})", t.cert.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, Env};
    use std::path::Path;

    fn summary() -> Summary {
        let text = "[upstreams.a]\nservers = [\"http://127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"a\"\n\
                    [clients.c]\nroutes = [\"*\"]\nkeys = [{ hash = \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" }]\n";
        Summary::of(&load_str(text, Path::new("k.toml"), &Env::default()).unwrap())
    }

    #[test]
    fn text_and_json_say_the_same() {
        let s = summary();
        let (addr, admin) = ("127.0.0.1:8080".parse().unwrap(), Some("127.0.0.1:9901".parse().unwrap()));
        let text = s.text(addr, admin);
        assert!(text.contains("listening on http://127.0.0.1:8080\n"), "{text}");
        assert!(text.contains("admin:      127.0.0.1:9901\n"), "{text}");
        assert!(text.contains("1 client, 1 key, 1 route, 1 upstream"), "{text}");
        let line = s.json(addr, admin);
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["listen"], "http://127.0.0.1:8080");
        assert_eq!(v["admin"], "127.0.0.1:9901");
        assert_eq!(v["tls"], "off (plain HTTP)");
        assert_eq!(v["config"], "k.toml");
        assert_eq!((v["clients"].as_u64(), v["keys"].as_u64(), v["routes"].as_u64()), (Some(1), Some(1), Some(1)));
        assert_eq!(v["upstreams"], 1);
        let off: serde_json::Value = serde_json::from_str(&s.json(addr, None)).unwrap();
        assert!(off["admin"].is_null());
        assert!(s.text(addr, None).contains("admin:      off\n"));
    }
}
