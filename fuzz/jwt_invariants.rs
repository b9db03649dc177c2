//! The token parser's invariants, shared by the `jwt_parse` fuzz target and
//! `tests/jwt_props.rs`: no input panics, and the only input ever accepted
//! is the one token the fixture signed.

use std::sync::OnceLock;

use keygate::jwt::Verifier;

/// A verifier with one HS256 issuer and client `billing`, and its one valid token.
pub struct Fixture {
    pub verifier: Verifier,
    pub valid: String,
    pub now: i64,
}

const SECRET: &str = "fuzzing-secret-of-thirty-two-bytes!!";

/// Built once per process.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let text = "[upstreams.a]\nservers = [\"http://127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"a\"\n\
                    [clients.billing]\nroutes = [\"*\"]\n\
                    [[jwt]]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret_env = \"S\"\n";
        let env = keygate::config::Env::from([("S".to_string(), SECRET.to_string())]);
        let config = keygate::config::load_str(text, std::path::Path::new("f.toml"), &env).expect("fixture config");
        let verifier = Verifier::new(&config, None).expect("a verifier");
        let now = keygate::keys::unix_now();
        let claims = serde_json::json!({"iss": "i", "aud": "a", "sub": "billing", "exp": now + 3600});
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
        let valid = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("token");
        Fixture { verifier, valid, now }
    })
}

/// Check one input as a Bearer token.
pub fn check_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let f = fixture();
    let shaped = keygate::jwt::verify::looks_like_jwt(data);
    match f.verifier.check(text, f.now) {
        Ok(_) => {
            assert!(shaped, "accepted a value not shaped like a JWT");
            assert_eq!(text, f.valid, "accepted a token other than the one signed");
        }
        Err(_) => assert_ne!(text, f.valid, "refused the valid token"),
    }
}
