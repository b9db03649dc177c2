//! Path confusion: a client allowed only on `/public` sends spellings that
//! some server somewhere reads as another route. Whatever keygate answers,
//! everything the upstream receives must be under `/public`, read as the most
//! lenient upstream would read it, and already in keygate's normal form (so
//! the path routed is the path forwarded).

use std::time::Duration;

use keygate::proxy::path::normalize;

use super::*;

/// Targets sent raw, as a hostile client would.
const VARIANTS: &[&str] = &[
    "/public/../admin",
    "/public/../../admin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/public/.%2e/admin",
    "/public/%2e./admin",
    "/public/%252e%252e/admin",
    "/public%2f..%2fadmin",
    "/public/..%2fadmin",
    "/public/%2F../admin",
    "/public%2Fadmin",
    "/public/..%5cadmin",
    "/public/%5C../admin",
    "/public\\..\\admin",
    "/public/..\\admin",
    "//admin",
    "///admin",
    "//public/../admin",
    "/./admin",
    "/public/./../admin",
    "/public/.././admin",
    "/public//../admin",
    "/public/x/../../admin",
    "/public/x/%2e%2e/%2e%2e/admin",
    "/PUBLIC/x",
    "/Public/../admin",
    "/public/../ADMIN",
    "/%70ublic/../admin",
    "/%70ublic/x",
    "/publi%63/x",
    "/public%2e/x",
    "/public./x",
    "/public../x",
    "/public.",
    "/public..",
    "/admin.",
    "/admin./",
    "/admin..",
    "/admin%2e",
    "/public/..",
    "/public/...",
    "/public/x/.",
    "/public/x/..",
    "/public/..;/admin",
    "/public/.;/../admin",
    "/public/..%3b/admin",
    "/public;x/../admin",
    "/public/%00/../admin",
    "/public/x%00/../../admin",
    "/admin%00/public",
    "/public/..%00/admin",
    "/public/%2e%2e%00/admin",
    "/public/.%00./admin",
    "/..",
    "/../public",
    "/%2e%2e/public",
    "/public/%",
    "/public/%zz/../admin",
    "/public/%c0%ae%c0%ae/admin",
    "/public-admin",
    "/publicadmin",
    "/public%20/../admin",
    "/public/%20../admin",
    "/public/..%20/admin",
    "/public?/../admin",
    "/public#/../admin",
    "/public/%23/../admin",
    "/public/%3F/../admin",
    "http://keygate.test/public/../admin",
    "http://keygate.test//admin",
    "/public/./x",
    "/public//x",
    "/public/%78",
    "/public/a/b/../c",
    "/public",
    "/public/",
    "/public/;x/../admin",
    "/public/%3bx/../admin",
    "/public/x./../../admin",
    "/public/x%20/../../admin",
    "/admin;x",
    "/ADMIN",
    "/Public/x",
    "/public;x/y",
    "/PUBLIC%3Bx/y",
];

/// The path a lenient upstream resolves: every escape decoded, `\` as `/`,
/// dot segments removed (also `..;`), slashes merged, lower case, trailing
/// dots and spaces dropped (Windows).
fn lenient(uri: &str) -> String {
    let path = uri.split(['?', '#']).next().unwrap_or_default();
    let mut decoded = Vec::new();
    let mut bytes = path.bytes();
    while let Some(b) = bytes.next() {
        let hex = |c: Option<u8>| c.and_then(|c| char::from(c).to_digit(16));
        if b == b'%' {
            let (hi, lo) = (hex(bytes.next()), hex(bytes.next()));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                decoded.push((hi * 16 + lo) as u8);
                continue;
            }
        }
        decoded.push(b);
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/").to_ascii_lowercase();
    let mut out: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => match s.trim_end_matches(['.', ' ']) {
                "" => {}
                s => out.push(s),
            },
        }
    }
    format!("/{}", out.join("/"))
}

#[test]
fn lenient_reading_is_lenient() {
    assert_eq!(lenient("/public/%2e%2e%2fadmin"), "/admin");
    assert_eq!(lenient("/public\\..\\ADMIN"), "/admin");
    assert_eq!(lenient("/public/..;/admin?x"), "/admin");
    assert_eq!(lenient("//public/./x/"), "/public/x");
    assert_eq!(lenient("/ADMIN%2e%20;x"), "/admin");
}

#[tokio::test]
async fn no_path_variant_reaches_another_route() {
    assert!(VARIANTS.len() >= 60);
    let (up, kg) = start("").await;
    let mut forwarded = 0;
    for target in VARIANTS {
        let before = up.count();
        let ex = exchange(kg.addr, &raw_get(target), Duration::from_secs(5)).await;
        let status = ex.status().unwrap_or_else(|| panic!("{target}: no response: {ex:?}"));
        for seen in up.requests().iter().skip(before) {
            let path = seen.uri.split('?').next().unwrap_or_default();
            let resolved = lenient(&seen.uri);
            assert!(
                resolved == "/public" || resolved.starts_with("/public/"),
                "{target} reached the upstream as {} (read as {resolved})",
                seen.uri
            );
            assert_eq!(normalize(path).ok().as_deref(), Some(path), "{target} forwarded unnormalised as {}", seen.uri);
        }
        forwarded += up.count() - before;
        assert!(matches!(status, 200 | 400 | 403 | 404), "{target}: {status}");
    }
    // Some variants are harmless spellings of /public and must still pass.
    assert!(forwarded >= 8, "only {forwarded} variants forwarded");
    still_serves(&kg, &up).await;
    kg.stop().await;
}

#[tokio::test]
async fn dot_segments_with_parameters_are_refused() {
    let (up, kg) = start("").await;
    for target in ["/public/..;/admin", "/public/.;/x", "/public/..%3B/admin"] {
        let ex = exchange(kg.addr, &raw_get(target), Duration::from_secs(5)).await;
        assert_eq!(ex.status(), Some(400), "{target}: {ex:?}");
    }
    assert_eq!(up.count(), 0);
    still_serves(&kg, &up).await;
    kg.stop().await;
}

#[tokio::test]
async fn the_routed_path_is_the_forwarded_path() {
    let (up, kg) = start("").await;
    for (target, forwarded) in [
        ("/public/./a//b/%7e/../c", "/public/a/b/c"),
        ("/%70ublic/x", "/public/x"),
        ("/public/a/%2a?q=%2e%2e", "/public/a/%2A?q=%2e%2e"),
    ] {
        let ex = exchange(kg.addr, &raw_get(target), Duration::from_secs(5)).await;
        assert_eq!(ex.status(), Some(200), "{target}: {ex:?}");
        assert_eq!(up.last().uri, forwarded, "{target}");
    }
    kg.stop().await;
}
