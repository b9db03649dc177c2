//! Token verification: ES256, RS256, EdDSA and HS256, cold (a signature
//! check per token) and cached (a caller reusing its token), next to the
//! key lookup they stand beside.

#[path = "../tests/support/jwks.rs"]
#[allow(dead_code)]
mod jwks;

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::config::{self, Env};
use keygate::jwt::Verifier;

const SECRET: &str = "a-benchmark-secret-of-32-bytes-or-more";

/// One issuer per algorithm family, and client `billing`.
fn verifier(signers: &[&jwks::Signer], dir: &Path) -> Verifier {
    let file = dir.join("jwks.json");
    std::fs::write(&file, jwks::jwks(signers)).expect("jwks");
    let text = format!(
        "[upstreams.a]\nservers = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"a\"\n\
         [clients.billing]\nroutes = [\"*\"]\n\
         [[jwt]]\nissuer = \"pk\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\", \"RS256\", \"EdDSA\"]\njwks_file = \"{}\"\n\
         [[jwt]]\nissuer = \"hs\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\nsecret_env = \"S\"\n",
        file.display()
    );
    let env = Env::from([("S".to_string(), SECRET.to_string())]);
    let config = config::load_str(&text, Path::new("bench.toml"), &env).expect("config");
    Verifier::new(&config, None).expect("verifier")
}

fn verification(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("dir");
    let (es, rs, ed, hs) =
        (jwks::Signer::ec("e"), jwks::Signer::rsa("r"), jwks::Signer::ed("d"), jwks::Signer::hmac(SECRET.as_bytes()));
    let v = verifier(&[&es, &rs, &ed], dir.path());
    let now = keygate::keys::unix_now();
    for (name, signer, iss) in [("ES256", &es, "pk"), ("RS256", &rs, "pk"), ("EdDSA", &ed, "pk"), ("HS256", &hs, "hs")]
    {
        let token = signer.sign(&jwks::claims(iss, "api", "billing", 3600));
        assert!(v.verify(&token, now).is_ok(), "{name}");
        c.bench_function(&format!("jwt/{name}/cold"), |b| {
            b.iter(|| black_box(v.check(black_box(&token), now)).is_ok())
        });
        c.bench_function(&format!("jwt/{name}/cached"), |b| {
            b.iter(|| black_box(v.verify(black_box(&token), now)).is_ok())
        });
    }
}

criterion_group!(benches, verification);
criterion_main!(benches);
