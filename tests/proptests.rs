//! The fuzz targets' invariants as property tests, so that `cargo test` on
//! the stable toolchain checks them on every run. The invariants themselves
//! live in `fuzz/invariants.rs`, shared with the fuzz targets.

#[path = "../fuzz/invariants.rs"]
mod invariants;

use proptest::prelude::*;
use proptest::sample::select;

/// Paths over an alphabet that keeps hitting escapes, dots, slashes and parameters.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => select(vec!["/", "/", ".", "..", "a", "B", "~", "-", ";", "%", "\\", "\0", "\u{e9}", "?"]),
        2 => select(vec![
            "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%00", "%25", "%3b", "%3B", "%41", "%7e", "%zz", "%2",
            "/..", "/.", "//", ";x", "..;", "public", "admin",
        ]),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|parts| format!("/{}", parts.concat()))
}

/// Header names a caller might use to smuggle something past the sanitiser.
fn header_name() -> impl Strategy<Value = String> {
    let base = select(vec![
        "x-api-key",
        "x-token",
        "apikey",
        "authorization",
        "x-client-id",
        "x-identity",
        "x-caller",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "x-real-ip",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-request-id",
        "accept",
        "x-other",
    ]);
    // Frameworks read `_` as `-` and ignore case: try every spelling.
    (base, any::<u32>()).prop_map(|(name, bits)| {
        name.chars()
            .enumerate()
            .map(|(i, c)| match (c, bits >> (i % 32) & 1) {
                ('-', 1) => '_',
                (c, 1) => c.to_ascii_uppercase(),
                (c, _) => c,
            })
            .collect()
    })
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "k1",
            "Bearer k1",
            "bearer  k1 ",
            "ApiKey k2",
            "Basic abc",
            "",
            "x-api-key, x-client-id",
            "keep-alive, x_token",
            "close",
            "chunked",
            "billing",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,12}",
    ]
}

fn query() -> impl Strategy<Value = String> {
    let pair = select(vec!["api_key=k1", "key=k2", "api_key=", "a=1", "key", "api%5Fkey=k3", "api_key=k%31", "&"]);
    proptest::collection::vec(pair, 0..5).prop_map(|p| p.join("&"))
}

/// The fuzz target's input format: a config byte, the query, `name: value` lines.
fn request() -> impl Strategy<Value = Vec<u8>> {
    (any::<u8>(), query(), proptest::collection::vec((header_name(), header_value()), 0..12)).prop_map(
        |(pick, query, headers)| {
            let mut text = format!("{query}\n");
            for (name, value) in headers {
                text.push_str(&format!("{name}: {value}\n"));
            }
            [vec![pick], text.into_bytes()].concat()
        },
    )
}

/// TOML-ish text assembled from keygate's own vocabulary, often broken.
fn config_text() -> impl Strategy<Value = Vec<u8>> {
    let piece = select(vec![
        "[listen]\n",
        "[admin]\n",
        "[auth]\n",
        "[rate_limit]\n",
        "[upstreams.a]\n",
        "[[routes]]\n",
        "[clients.a]\n",
        "[listen.tls]\n",
        "address = \"127.0.0.1:0\"\n",
        "header_read_timeout = \"1s\"\n",
        "idle_timeout = \"0s\"\n",
        "max_connections = -1\n",
        "max_header_bytes = 99999999999999999999\n",
        "servers = [\"http://127.0.0.1:1\"]\n",
        "servers = [\"ftp://x\"]\n",
        "name = \"r\"\n",
        "path = \"/a/../..\"\n",
        "upstream = \"a\"\n",
        "upstream = \"b\"\n",
        "max_body = \"1MiB\"\n",
        "max_body = \"-1\"\n",
        "routes = [\"*\"]\n",
        "routes = [\"r\", \"zz\"]\n",
        "keys = [{ hash = \"sha256:00\" }]\n",
        "keys = [{ env = \"K\" }]\n",
        "rate_limit = { per_second = 0, burst = 0 }\n",
        "methods = [\"G E T\"]\n",
        "host = \"\u{e9}\"\n",
        "query_param = \"\"\n",
        "header = \"host\"\n",
        "\"",
        "=",
        "\n",
        "\u{0}KEYGATE_UPSTREAM=http://x\nKEYGATE_KEY_A=s\n",
        "\u{0}KEYGATE_LISTEN=nope\n",
    ]);
    proptest::collection::vec(piece, 0..20).prop_map(|p| p.concat().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn path_invariants_hold(input in tricky_path()) {
        invariants::check_path(&input);
    }

    #[test]
    fn path_invariants_hold_on_any_text(input in any::<String>()) {
        invariants::check_path(&input);
        invariants::check_path(&format!("/{input}"));
    }

    #[test]
    fn sanitised_headers_never_keep_the_key_or_owned_headers(data in request()) {
        invariants::check_headers(&data);
    }

    #[test]
    fn sanitising_survives_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        invariants::check_headers(&data);
    }

    #[test]
    fn config_loading_never_panics(data in config_text()) {
        invariants::check_config(&data);
    }

    #[test]
    fn config_loading_survives_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        invariants::check_config(&data);
    }
}

#[test]
fn seed_corpora_hold() {
    for (target, check) in [
        ("path_normalize", (|d: &[u8]| invariants::check_path(&String::from_utf8_lossy(d))) as fn(&[u8])),
        ("headers_sanitize", invariants::check_headers as fn(&[u8])),
        ("config_load", invariants::check_config as fn(&[u8])),
    ] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut seen = 0;
        for entry in entries.flatten() {
            let data = std::fs::read(entry.path()).expect("read seed");
            check(&data);
            seen += 1;
        }
        assert!(seen > 0, "no seeds for {target}");
    }
}
