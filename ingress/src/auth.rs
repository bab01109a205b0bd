//! Bearer-token authentication and tenancy: JWTs signed with HS256 (shared secret) or RS256/ES256
//! (public keys from a JWKS file), with `exp`/`nbf`/`iss`/`aud` checked under a small leeway.
//! Claims: `tenant` and `roles` (`ingest`, `read`, `admin`). A token that verified is
//! remembered, so that its signature is checked once rather than on every request; its `exp` and
//! `nbf` are still checked on every use.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::ApiError;

/// What a token may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Send events.
    Ingest,
    /// Read feeds, views and dead letters.
    Read,
    /// Replay dead letters and other operator actions.
    Admin,
}

impl Role {
    /// The role's name in tokens.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "ingest" => Ok(Self::Ingest),
            "read" => Ok(Self::Read),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?} (ingest, read, admin)")),
        }
    }
}

/// The claims Sentinel reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The tenant the bearer acts for.
    pub tenant: String,
    /// What the bearer may do; unknown role names are ignored.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Subject, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry (seconds since the epoch; a decimal NumericDate counts from its whole second).
    #[serde(deserialize_with = "numeric_date::expiry")]
    pub exp: u64,
    /// Not before (seconds since the epoch; a decimal NumericDate counts from the next whole
    /// second).
    #[serde(
        default,
        deserialize_with = "numeric_date::not_before",
        skip_serializing_if = "Option::is_none"
    )]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(
        default,
        deserialize_with = "numeric_date::issued_at",
        skip_serializing_if = "Option::is_none"
    )]
    pub iat: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// RFC 7519 NumericDate claims: seconds since the epoch, which the RFC allows as a decimal
/// (some issuers send `"exp": 1767225600.5`). Each is rounded so that the token is never valid
/// for longer than it says: an expiry down, a not-before up.
mod numeric_date {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};

    /// Latest date taken, in seconds: the year 9999. Beyond it (or negative, or not a number)
    /// the claim is refused rather than wrapped.
    const LATEST: f64 = 253_402_300_799.0;

    fn seconds<'de, D: Deserializer<'de>>(value: f64) -> Result<f64, D::Error> {
        if value.is_finite() && (0.0..=LATEST).contains(&value) {
            Ok(value)
        } else {
            Err(D::Error::custom(format!(
                "{value} is not a date: a NumericDate is seconds since 1970 up to the year 9999"
            )))
        }
    }

    /// `exp`, rounded down.
    pub(super) fn expiry<'de, D: Deserializer<'de>>(claim: D) -> Result<u64, D::Error> {
        let value = seconds::<D>(f64::deserialize(claim)?)?;
        Ok(value.floor() as u64)
    }

    /// `nbf`, rounded up.
    pub(super) fn not_before<'de, D: Deserializer<'de>>(claim: D) -> Result<Option<u64>, D::Error> {
        Option::<f64>::deserialize(claim)?
            .map(|value| seconds::<D>(value).map(|value| value.ceil() as u64))
            .transpose()
    }

    /// `iat`, rounded down (informational).
    pub(super) fn issued_at<'de, D: Deserializer<'de>>(claim: D) -> Result<Option<u64>, D::Error> {
        Option::<f64>::deserialize(claim)?
            .map(|value| seconds::<D>(value).map(|value| value.floor() as u64))
            .transpose()
    }
}

/// A token's `aud`: one audience, or several (RFC 7519 allows both forms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "sentinel"`.
    One(String),
    /// `"aud": ["sentinel", "other"]`.
    Many(Vec<String>),
}

/// Who is calling, once the token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's tenant.
    pub tenant: String,
    /// The token's known roles.
    pub roles: BTreeSet<Role>,
    /// The token's subject.
    pub subject: Option<String>,
    /// Until when (seconds since the epoch) the token is accepted: its `exp` and the leeway. A
    /// request that outlives it, such as a live feed, ends then.
    pub valid_until: u64,
}

impl Principal {
    /// 403 unless the principal has `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.roles.contains(&role) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "missing-role",
                "Missing role",
                format!("this request needs the {:?} role", role.as_str()),
            ))
        }
    }
}

/// How tokens are verified.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// Shared secret for HS256 tokens.
    pub hs256_secret: Option<String>,
    /// JWKS file with the public keys of RS256/ES256 tokens.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`.
    pub leeway: Duration,
}

/// The authenticator could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// Neither a secret nor a JWKS file is configured.
    #[error("no token verification configured: set SENTINEL_JWT_SECRET or SENTINEL_JWKS_FILE")]
    NothingConfigured,
    /// The secret is too short to be safe.
    #[error("SENTINEL_JWT_SECRET must be at least 32 bytes")]
    WeakSecret,
    /// The JWKS file cannot be read or parsed.
    #[error("cannot load the JWKS file {path}: {reason}")]
    Jwks {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Why a request is not authenticated (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing bearer token: send Authorization: Bearer <JWT>")]
    Missing,
    /// Not `Bearer <token>`, or not a JWT.
    #[error("malformed bearer token: {0}")]
    Malformed(String),
    /// Signature, algorithm or key does not verify.
    #[error("token signature does not verify: {0}")]
    BadSignature(String),
    /// Expired.
    #[error("token has expired")]
    Expired,
    /// Not valid yet.
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    /// Issuer or audience mismatch, or missing claims.
    #[error("token claims are not acceptable: {0}")]
    Claims(String),
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let challenge = match &self {
            AuthError::Missing => r#"Bearer realm="sentinel""#.to_owned(),
            other => format!(
                r#"Bearer realm="sentinel", error="invalid_token", error_description="{}""#,
                other.to_string().replace('"', "'")
            ),
        };
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            self.to_string(),
        )
        .into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

struct VerificationKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Most verified tokens remembered; past it the memory starts over. Only tokens that verified
/// enter it, so its size is bounded by the clients' own tokens, not by what anyone sends.
const VERIFIED_TOKENS_HELD: usize = 10_000;

/// What a token that verified proved, and the time window it proves it in.
#[derive(Debug, Clone)]
struct Verified {
    principal: Principal,
    exp: u64,
    nbf: Option<u64>,
}

/// Verifies bearer tokens.
pub struct Authenticator {
    keys: Vec<VerificationKey>,
    settings: AuthSettings,
    /// Tokens whose signature and claims verified, by the token's text. The keys never change
    /// for the authenticator's life, so a signature that verified once always does.
    verified: Mutex<HashMap<Box<str>, Verified>>,
    verified_held: usize,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    match (jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(KeyAlgorithm::RS256), _) => Some(Algorithm::RS256),
        (Some(KeyAlgorithm::ES256), _) => Some(Algorithm::ES256),
        (Some(_), _) => None,
        (None, AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
        (None, AlgorithmParameters::EllipticCurve(ec)) if ec.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        (None, _) => None,
    }
}

/// Whether a JWKS key may verify signatures: not one meant for anything else (`use`), and, when
/// its operations are listed (`key_ops`), one that lists `verify`.
fn verifies_signatures(jwk: &jsonwebtoken::jwk::Jwk) -> bool {
    use jsonwebtoken::jwk::{KeyOperations, PublicKeyUse};
    let meant_for_signatures = jwk
        .common
        .public_key_use
        .as_ref()
        .is_none_or(|usage| *usage == PublicKeyUse::Signature);
    let may_verify = jwk
        .common
        .key_operations
        .as_ref()
        .is_none_or(|operations| operations.contains(&KeyOperations::Verify));
    meant_for_signatures && may_verify
}

impl Authenticator {
    /// Loads the secret and the JWKS file.
    pub fn new(settings: AuthSettings) -> Result<Self, AuthConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &settings.hs256_secret {
            if secret.len() < 32 {
                return Err(AuthConfigError::WeakSecret);
            }
            keys.push(VerificationKey {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if let Some(path) = &settings.jwks_file {
            let jwks_error = |reason: String| AuthConfigError::Jwks {
                path: path.clone(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| jwks_error(e.to_string()))?;
            let set: JwkSet = serde_json::from_str(&text).map_err(|e| jwks_error(e.to_string()))?;
            for jwk in &set.keys {
                let Some(algorithm) = jwk_algorithm(jwk).filter(|_| verifies_signatures(jwk))
                else {
                    continue;
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| jwks_error(e.to_string()))?;
                keys.push(VerificationKey {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key,
                });
            }
            if !keys.iter().any(|k| k.algorithm != Algorithm::HS256) {
                return Err(jwks_error("it holds no RS256 or ES256 key".to_owned()));
            }
        }
        if keys.is_empty() {
            return Err(AuthConfigError::NothingConfigured);
        }
        Ok(Self {
            keys,
            settings,
            verified: Mutex::new(HashMap::new()),
            verified_held: VERIFIED_TOKENS_HELD,
        })
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.settings.leeway.as_secs();
        // `exp` and `nbf` are checked by `authenticate_at`, on every use of the token, from
        // [`Claims`], which takes them as RFC 7519 allows (jsonwebtoken takes whole seconds
        // only, and would refuse a decimal one as missing). `exp` is required by `Claims`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // A configured issuer or audience must be in the token: jsonwebtoken checks each only
        // when the token carries it.
        let mut required = Vec::new();
        if self.settings.issuer.is_some() {
            required.push("iss");
        }
        if self.settings.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &self.settings.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.settings.issuer {
            validation.set_issuer(&[issuer]);
        }
        validation
    }

    /// Checks the request's bearer token.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        self.authenticate_at(headers, jsonwebtoken::get_current_timestamp())
    }

    /// [`Authenticator::authenticate`] at `now` (seconds since the epoch): a remembered token is
    /// checked against its time window, any other is verified and, when it verifies, remembered.
    fn authenticate_at(&self, headers: &HeaderMap, now: u64) -> Result<Principal, AuthError> {
        let token = bearer_token(headers)?;
        let remembered = self
            .verified
            .lock()
            .expect("verified tokens lock")
            .get(token)
            .cloned();
        let (verified, newly_verified) = match remembered {
            Some(verified) => (verified, false),
            None => (self.verify(token)?, true),
        };
        // The token's time window, with the leeway, on every use of the token (`verify` leaves
        // `exp` and `nbf` to this check).
        let leeway = self.settings.leeway.as_secs();
        if verified.exp < now.saturating_sub(leeway) {
            self.verified
                .lock()
                .expect("verified tokens lock")
                .remove(token);
            return Err(AuthError::Expired);
        }
        if verified.nbf.is_some_and(|nbf| nbf > now + leeway) {
            return Err(AuthError::NotYetValid);
        }
        // Only a token that verified and is valid now is remembered.
        if newly_verified {
            let mut tokens = self.verified.lock().expect("verified tokens lock");
            if tokens.len() >= self.verified_held {
                tokens.clear();
            }
            tokens.insert(token.into(), verified.clone());
        }
        Ok(verified.principal)
    }

    /// Verifies a token's signature and claims.
    fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let candidates: Vec<&VerificationKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::BadSignature(format!(
                "no key for algorithm {:?}{}",
                header.alg,
                header
                    .kid
                    .map(|k| format!(" and kid {k:?}"))
                    .unwrap_or_default()
            )));
        }
        let mut last = AuthError::BadSignature("no key verified the token".into());
        for candidate in candidates {
            match jsonwebtoken::decode::<Claims>(
                token,
                &candidate.key,
                &self.validation(candidate.algorithm),
            ) {
                Ok(data) => {
                    let claims = data.claims;
                    if claims.tenant.is_empty() {
                        return Err(AuthError::Claims("tenant is empty".into()));
                    }
                    return Ok(Verified {
                        principal: Principal {
                            roles: claims.roles.iter().filter_map(|r| r.parse().ok()).collect(),
                            tenant: claims.tenant,
                            subject: claims.sub,
                            valid_until: claims.exp.saturating_add(self.settings.leeway.as_secs()),
                        },
                        exp: claims.exp,
                        nbf: claims.nbf,
                    });
                }
                Err(err) => {
                    last = match err.kind() {
                        ErrorKind::InvalidIssuer => {
                            return Err(AuthError::Claims("wrong issuer".into()))
                        }
                        ErrorKind::InvalidAudience => {
                            return Err(AuthError::Claims("wrong audience".into()))
                        }
                        ErrorKind::MissingRequiredClaim(claim) => {
                            return Err(AuthError::Claims(format!("missing claim {claim}")))
                        }
                        ErrorKind::Json(e) => return Err(AuthError::Claims(e.to_string())),
                        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                            return Err(AuthError::Malformed(err.to_string()))
                        }
                        _ => AuthError::BadSignature(err.to_string()),
                    };
                }
            }
        }
        Err(last)
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed("the header is not ASCII".into()))?;
    // The scheme's name is case-insensitive (RFC 9110, section 11.1).
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AuthError::Malformed("expected `Bearer <JWT>`".into()))
}

/// Mints an HS256 token (for `sentinel token` and tests).
pub fn mint_hs256(
    secret: &str,
    tenant: &str,
    roles: &[Role],
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        tenant: tenant.to_owned(),
        roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
        sub: Some(format!("sentinel-token:{tenant}")),
        exp: now + ttl.as_secs(),
        nbf: Some(now),
        iat: Some(now),
        iss: issuer.map(str::to_owned),
        aud: audience.map(|audience| Audience::One(audience.to_owned())),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth() -> Authenticator {
        Authenticator::new(AuthSettings {
            hs256_secret: Some(SECRET.into()),
            leeway: Duration::from_secs(5),
            ..Default::default()
        })
        .unwrap()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    fn token_with(claims: &serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn a_minted_token_authenticates() {
        let token = mint_hs256(
            SECRET,
            "acme",
            &[Role::Ingest, Role::Read],
            Duration::from_secs(60),
            None,
            None,
        )
        .unwrap();
        let principal = auth().authenticate(&bearer(&token)).unwrap();
        assert_eq!(principal.tenant, "acme");
        assert!(principal.require(Role::Ingest).is_ok());
        assert!(principal.require(Role::Admin).is_err());
        // The scheme's name in any case.
        let mut shouting = HeaderMap::new();
        shouting.insert(
            header::AUTHORIZATION,
            format!("BEARER {token}").parse().unwrap(),
        );
        assert_eq!(auth().authenticate(&shouting).unwrap().tenant, "acme");
    }

    #[test]
    fn bad_tokens_are_rejected_with_the_reason() {
        let now = jsonwebtoken::get_current_timestamp();
        let auth = auth();
        assert_eq!(
            auth.authenticate(&HeaderMap::new()),
            Err(AuthError::Missing)
        );
        let mut basic = HeaderMap::new();
        basic.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(matches!(
            auth.authenticate(&basic),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            auth.authenticate(&bearer("not.a.jwt")),
            Err(AuthError::Malformed(_))
        ));
        let good = serde_json::json!({"tenant": "acme", "roles": ["ingest"], "exp": now + 60});
        assert!(matches!(
            auth.authenticate(&bearer(&token_with(
                &good,
                "another-secret-another-secret-xx"
            ))),
            Err(AuthError::BadSignature(_))
        ));
        let expired = serde_json::json!({"tenant": "acme", "exp": now - 60});
        assert_eq!(
            auth.authenticate(&bearer(&token_with(&expired, SECRET))),
            Err(AuthError::Expired)
        );
        let within_leeway = serde_json::json!({"tenant": "acme", "exp": now - 2});
        assert!(auth
            .authenticate(&bearer(&token_with(&within_leeway, SECRET)))
            .is_ok());
        let early = serde_json::json!({"tenant": "acme", "exp": now + 600, "nbf": now + 300});
        assert_eq!(
            auth.authenticate(&bearer(&token_with(&early, SECRET))),
            Err(AuthError::NotYetValid)
        );
        let no_exp = serde_json::json!({"tenant": "acme"});
        assert!(matches!(
            auth.authenticate(&bearer(&token_with(&no_exp, SECRET))),
            Err(AuthError::Claims(_))
        ));
        let no_tenant = serde_json::json!({"exp": now + 60});
        assert!(matches!(
            auth.authenticate(&bearer(&token_with(&no_tenant, SECRET))),
            Err(AuthError::Claims(_))
        ));
    }

    #[test]
    fn decimal_dates_are_taken_as_rfc_7519_allows() {
        let now = jsonwebtoken::get_current_timestamp() as f64;
        let auth = auth();
        let token = |claims: serde_json::Value| bearer(&token_with(&claims, SECRET));
        let decimal = serde_json::json!({
            "tenant": "acme", "exp": now + 60.5, "nbf": now - 10.25, "iat": now - 10.25
        });
        assert_eq!(auth.authenticate(&token(decimal)).unwrap().tenant, "acme");
        // Past the leeway (5 s), a decimal expiry is as expired as a whole one.
        let expired = serde_json::json!({"tenant": "acme", "exp": now - 60.5});
        assert_eq!(auth.authenticate(&token(expired)), Err(AuthError::Expired));
        let early = serde_json::json!({"tenant": "acme", "exp": now + 600.0, "nbf": now + 300.5});
        assert_eq!(
            auth.authenticate(&token(early)),
            Err(AuthError::NotYetValid)
        );
        // An expiry is rounded down and a not-before up: never valid longer than the token says.
        let claims: Claims = serde_json::from_value(serde_json::json!({
            "tenant": "acme", "exp": 1_767_225_600.9, "nbf": 1_767_225_000.1
        }))
        .unwrap();
        assert_eq!(
            (claims.exp, claims.nbf),
            (1_767_225_600, Some(1_767_225_001))
        );
        for not_a_date in [
            serde_json::json!(-1.5),
            serde_json::json!(1e300),
            serde_json::json!("tomorrow"),
        ] {
            let claims = serde_json::json!({"tenant": "acme", "exp": not_a_date});
            assert!(
                matches!(auth.authenticate(&token(claims)), Err(AuthError::Claims(_))),
                "exp {not_a_date} was not refused"
            );
        }
    }

    fn remembered(auth: &Authenticator) -> usize {
        auth.verified.lock().unwrap().len()
    }

    #[test]
    fn a_verified_token_is_remembered_and_still_expires() {
        let now = jsonwebtoken::get_current_timestamp();
        let auth = auth();
        let claims = serde_json::json!({
            "tenant": "acme", "roles": ["ingest", "read"], "sub": "svc", "exp": now + 60
        });
        let token = token_with(&claims, SECRET);
        let first = auth.authenticate_at(&bearer(&token), now).unwrap();
        assert_eq!(remembered(&auth), 1);
        let again = auth.authenticate_at(&bearer(&token), now + 30).unwrap();
        assert_eq!(
            again, first,
            "the remembered token proves what verifying it proved"
        );
        assert_eq!(again.subject.as_deref(), Some("svc"));
        assert!(again.require(Role::Read).is_ok());
        // Within the leeway (5 s) past exp it still holds; past it, it is refused and forgotten.
        assert!(auth.authenticate_at(&bearer(&token), now + 64).is_ok());
        assert_eq!(
            auth.authenticate_at(&bearer(&token), now + 66),
            Err(AuthError::Expired)
        );
        assert_eq!(remembered(&auth), 0);
        assert_eq!(
            auth.authenticate_at(&bearer(&token), now + 66),
            Err(AuthError::Expired),
            "once forgotten, verifying it again still finds it expired"
        );
    }

    #[test]
    fn only_tokens_that_verify_are_remembered_and_the_memory_is_bounded() {
        let now = jsonwebtoken::get_current_timestamp();
        let mut auth = auth();
        auth.verified_held = 2;
        let forged = token_with(
            &serde_json::json!({"tenant": "acme", "exp": now + 60}),
            "another-secret-another-secret-xx",
        );
        for _ in 0..2 {
            assert!(matches!(
                auth.authenticate(&bearer(&forged)),
                Err(AuthError::BadSignature(_))
            ));
        }
        let early = token_with(
            &serde_json::json!({"tenant": "acme", "exp": now + 600, "nbf": now + 300}),
            SECRET,
        );
        assert_eq!(
            auth.authenticate(&bearer(&early)),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(remembered(&auth), 0);
        for tenant in ["a", "b", "c", "d", "e"] {
            let token = token_with(
                &serde_json::json!({"tenant": tenant, "exp": now + 60}),
                SECRET,
            );
            assert_eq!(auth.authenticate(&bearer(&token)).unwrap().tenant, tenant);
            assert!(remembered(&auth) <= 2);
        }
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let auth = Authenticator::new(AuthSettings {
            hs256_secret: Some(SECRET.into()),
            issuer: Some("https-issuer".into()),
            audience: Some("sentinel".into()),
            ..Default::default()
        })
        .unwrap();
        let ttl = Duration::from_secs(60);
        let right = mint_hs256(
            SECRET,
            "acme",
            &[Role::Ingest],
            ttl,
            Some("https-issuer"),
            Some("sentinel"),
        )
        .unwrap();
        assert!(auth.authenticate(&bearer(&right)).is_ok());
        let wrong_iss = mint_hs256(
            SECRET,
            "acme",
            &[Role::Ingest],
            ttl,
            Some("other"),
            Some("sentinel"),
        )
        .unwrap();
        assert!(matches!(
            auth.authenticate(&bearer(&wrong_iss)),
            Err(AuthError::Claims(_))
        ));
        let wrong_aud = mint_hs256(
            SECRET,
            "acme",
            &[Role::Ingest],
            ttl,
            Some("https-issuer"),
            Some("x"),
        )
        .unwrap();
        assert!(matches!(
            auth.authenticate(&bearer(&wrong_aud)),
            Err(AuthError::Claims(_))
        ));
        for (issuer, audience, missing) in [
            (None, Some("sentinel"), "iss"),
            (Some("https-issuer"), None, "aud"),
        ] {
            let token = mint_hs256(SECRET, "acme", &[Role::Ingest], ttl, issuer, audience).unwrap();
            match auth.authenticate(&bearer(&token)) {
                Err(AuthError::Claims(detail)) => assert!(detail.contains(missing), "{detail}"),
                other => panic!("a token without {missing} was not refused: {other:?}"),
            }
        }
        let now = jsonwebtoken::get_current_timestamp();
        let several = Claims {
            tenant: "acme".into(),
            roles: vec!["ingest".into()],
            sub: None,
            exp: now + 60,
            nbf: None,
            iat: None,
            iss: Some("https-issuer".into()),
            aud: Some(Audience::Many(vec!["other".into(), "sentinel".into()])),
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &several,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let principal = auth
            .authenticate(&bearer(&token))
            .expect("an audience among several is accepted");
        assert_eq!(principal.tenant, "acme");
    }

    #[test]
    fn configuration_is_checked() {
        assert!(matches!(
            Authenticator::new(AuthSettings::default()),
            Err(AuthConfigError::NothingConfigured)
        ));
        let weak = AuthSettings {
            hs256_secret: Some("short".into()),
            ..Default::default()
        };
        assert!(matches!(
            Authenticator::new(weak),
            Err(AuthConfigError::WeakSecret)
        ));
    }

    #[test]
    fn unauthorized_responses_carry_a_bearer_challenge() {
        let response = AuthError::Expired.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(
            challenge.starts_with(r#"Bearer realm="sentinel", error="invalid_token""#),
            "{challenge}"
        );
        let missing = AuthError::Missing.into_response();
        assert_eq!(
            missing.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="sentinel""#
        );
    }
}
