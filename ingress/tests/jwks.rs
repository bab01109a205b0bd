//! RS256 and ES256 tokens verified with the public keys of a JWKS file.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use ingress::auth::{AuthError, AuthSettings, Authenticator, Claims};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn authenticator() -> Authenticator {
    Authenticator::new(AuthSettings {
        jwks_file: Some(fixture("jwks.json")),
        leeway: Duration::from_secs(5),
        ..Default::default()
    })
    .expect("the JWKS fixture loads")
}

fn sign(algorithm: Algorithm, kid: &str, key: &EncodingKey, tenant: &str) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    let claims = Claims {
        tenant: tenant.into(),
        roles: vec!["ingest".into(), "read".into()],
        sub: Some("svc".into()),
        exp: jsonwebtoken::get_current_timestamp() + 60,
        nbf: None,
        iat: None,
        iss: None,
        aud: None,
    };
    jsonwebtoken::encode(&header, &claims, key).expect("signing")
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    headers
}

fn es256_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&std::fs::read(fixture("es256-private.pem")).unwrap()).unwrap()
}

fn rs256_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture("rs256-private.pem")).unwrap()).unwrap()
}

#[test]
fn es256_and_rs256_tokens_verify_against_the_jwks() {
    let auth = authenticator();
    let es = sign(Algorithm::ES256, "test-es256", &es256_key(), "acme");
    assert_eq!(auth.authenticate(&bearer(&es)).unwrap().tenant, "acme");
    let rs = sign(Algorithm::RS256, "test-rs256", &rs256_key(), "globex");
    let principal = auth.authenticate(&bearer(&rs)).unwrap();
    assert_eq!(principal.tenant, "globex");
    assert_eq!(principal.roles.len(), 2);
}

#[test]
fn a_wrong_key_or_unknown_kid_does_not_verify() {
    let auth = authenticator();
    // Signed with the EC key but claiming the RSA key's id and algorithm family mismatch.
    let wrong_kid = sign(Algorithm::ES256, "test-rs256", &es256_key(), "acme");
    assert!(matches!(
        auth.authenticate(&bearer(&wrong_kid)),
        Err(AuthError::BadSignature(_))
    ));
    let unknown_kid = sign(Algorithm::ES256, "nobody", &es256_key(), "acme");
    assert!(matches!(
        auth.authenticate(&bearer(&unknown_kid)),
        Err(AuthError::BadSignature(_))
    ));
    // An HS256 token is refused when no secret is configured, even if signed with a JWKS value.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"tenant": "acme", "exp": jsonwebtoken::get_current_timestamp() + 60}),
        &EncodingKey::from_secret(b"zp0YbQ9uFP-any-public-value-here"),
    )
    .unwrap();
    assert!(matches!(
        auth.authenticate(&bearer(&hs)),
        Err(AuthError::BadSignature(_))
    ));
}

#[test]
fn a_key_meant_for_encryption_or_without_verify_does_not_verify() {
    let mut set: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    set["keys"][0]["use"] = "enc".into();
    set["keys"][1]["key_ops"] = serde_json::json!(["encrypt"]);
    let path = std::env::temp_dir().join(format!("jwks-{}.json", std::process::id()));
    // One key remains usable (the RS256 key again, listing verify), or the file is refused.
    let modulus = set["keys"][1]["n"].clone();
    set["keys"].as_array_mut().unwrap().push(
        serde_json::json!({"kty": "RSA", "kid": "test-rs256-verify", "alg": "RS256",
            "key_ops": ["verify"], "n": modulus, "e": "AQAB"}),
    );
    std::fs::write(&path, set.to_string()).unwrap();
    let auth = Authenticator::new(AuthSettings {
        jwks_file: Some(path.clone()),
        leeway: Duration::from_secs(5),
        ..Default::default()
    })
    .expect("the JWKS loads");
    std::fs::remove_file(&path).unwrap();
    let es = sign(Algorithm::ES256, "test-es256", &es256_key(), "acme");
    assert!(matches!(
        auth.authenticate(&bearer(&es)),
        Err(AuthError::BadSignature(_))
    ));
    let rs = sign(Algorithm::RS256, "test-rs256", &rs256_key(), "acme");
    assert!(matches!(
        auth.authenticate(&bearer(&rs)),
        Err(AuthError::BadSignature(_))
    ));
    let verify = sign(Algorithm::RS256, "test-rs256-verify", &rs256_key(), "acme");
    assert_eq!(auth.authenticate(&bearer(&verify)).unwrap().tenant, "acme");
}
