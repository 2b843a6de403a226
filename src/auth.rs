//! Signed tokens (JWT, HS256) that say who a connection is: checked before the WebSocket upgrade
//! is answered, and again when a client sends a fresh one. The signature and the token's shape
//! are `jsonwebtoken`'s job (no hand-written crypto); the clock is not: time comes in as an
//! argument, so the chat stays a state machine and every deadline is testable.

use std::fmt;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Whether a connection must bring a token (`--auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// An upgrade without a valid token gets HTTP 401.
    Required,
    /// Without a token a client is a guest; with a valid one it has its name; a bad one is 401.
    Optional,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The member's name (`sub`), held for them.
    pub name: String,
    /// When the token runs out (`exp`), in Unix milliseconds.
    pub expires_at_ms: u64,
    /// The rooms the member may be in (`rooms`); `None` for any.
    pub rooms: Option<Vec<String>>,
}

impl Identity {
    /// Whether the token lets its holder into `room`.
    pub fn may_enter(&self, room: &str) -> bool {
        self.rooms.as_ref().is_none_or(|rooms| rooms.iter().any(|allowed| allowed == room))
    }
}

/// The claims wschat reads and writes.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// Seconds since the Unix epoch, as JWT has it (RFC 7519 section 4.1.4). Required; optional
    /// here only so that its absence is told apart from a malformed token.
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rooms: Option<Vec<String>>,
}

/// Why a token was refused. The reason goes to the log; none of the token does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or claims of the wrong type.
    Malformed,
    /// Signed with another key, or altered.
    BadSignature,
    /// Not HS256 (`none`, RS256, ...): never accepted, whatever the header says.
    WrongAlgorithm,
    /// No `exp` claim: every token must run out.
    NoExpiry,
    /// `exp` has passed.
    Expired,
    /// `nbf` has not come yet.
    NotYetValid,
    /// `sub` is not a name a member may have.
    BadSubject,
}

impl fmt::Display for TokenError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            TokenError::Malformed => "malformed token",
            TokenError::BadSignature => "bad signature",
            TokenError::WrongAlgorithm => "wrong algorithm (only HS256 is accepted)",
            TokenError::NoExpiry => "token without exp",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not valid yet (nbf)",
            TokenError::BadSubject => "sub is not a valid name",
        })
    }
}

/// Checks tokens against the server's secret.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// The shortest secret accepted: RFC 7518 section 3.2 asks for a key at least as long as the
/// hash, 256 bits for HS256.
pub const MIN_SECRET_BYTES: usize = 32;

/// Checks a secret before it is used: long enough to be worth signing with.
pub fn check_secret(secret: &[u8]) -> Result<(), String> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "the token secret has {} bytes; HS256 wants at least {MIN_SECRET_BYTES} (e.g. `head -c 32 /dev/urandom | base64`)",
            secret.len()
        ));
    }
    Ok(())
}

impl Verifier {
    /// A verifier for `secret`, which `check_secret` accepts.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        check_secret(secret)?;
        let mut validation = Validation::new(Algorithm::HS256);
        // The time checks are ours, against the `now` the reactor passes in: jsonwebtoken would
        // read the clock itself, and with a minute's leeway.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp"]);
        let key =
            DecodingKey::from_secret(secret).map_err(|error| format!("unusable token secret: {error}"))?;
        Ok(Verifier { key, validation })
    }

    /// The identity in `token`, if it is well-formed, signed with our secret, HS256, and valid at
    /// `now_ms` (Unix milliseconds). `valid_name` says whether `sub` may be a member's name.
    pub fn verify(
        &self,
        token: &str,
        now_ms: u64,
        valid_name: impl Fn(&str) -> bool,
    ) -> Result<Identity, TokenError> {
        // jsonwebtoken refuses other algorithms too, but cannot parse a header naming one it does
        // not know (`none`); read `alg` first, so the log says what was wrong.
        match header_algorithm(token) {
            Some(algorithm) if algorithm == "HS256" => {}
            Some(_) => return Err(TokenError::WrongAlgorithm),
            None => return Err(TokenError::Malformed),
        }
        let claims = match jsonwebtoken::decode::<Claims>(token.as_bytes(), &self.key, &self.validation) {
            Ok(data) => data.claims,
            Err(error) => {
                return Err(match error.kind() {
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidAlgorithmName
                    | ErrorKind::UnsupportedAlgorithm => TokenError::WrongAlgorithm,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => TokenError::NoExpiry,
                    _ => TokenError::Malformed,
                });
            }
        };
        let expires_at_ms = claims.exp.ok_or(TokenError::NoExpiry)?.saturating_mul(1000);
        if expires_at_ms <= now_ms {
            return Err(TokenError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf.saturating_mul(1000) > now_ms) {
            return Err(TokenError::NotYetValid);
        }
        if !valid_name(&claims.sub) {
            return Err(TokenError::BadSubject);
        }
        Ok(Identity { name: claims.sub, expires_at_ms, rooms: claims.rooms })
    }
}

/// The `alg` a token's header names, if the header is base64url JSON with a string `alg`.
fn header_algorithm(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&json).ok()?;
    header.get("alg")?.as_str().map(str::to_owned)
}

/// A token for `sub`, valid until `expires_at_secs` (Unix seconds), limited to `rooms` if given:
/// for `wschat token`, for backends that hand tokens out, and for tests.
pub fn mint(
    secret: &[u8],
    sub: &str,
    expires_at_secs: u64,
    rooms: Option<Vec<String>>,
) -> Result<String, String> {
    check_secret(secret)?;
    let claims = Claims { sub: sub.to_owned(), exp: Some(expires_at_secs), nbf: None, rooms };
    let key = EncodingKey::from_secret(secret).map_err(|error| format!("unusable token secret: {error}"))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|error| format!("cannot sign: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a test secret of at least 32 bytes, as HS256 wants";
    const NOW_MS: u64 = 1_764_100_000_000;
    const IN_AN_HOUR: u64 = NOW_MS / 1000 + 3600;

    fn verify(token: &str) -> Result<Identity, TokenError> {
        Verifier::new(SECRET).unwrap().verify(token, NOW_MS, |name| !name.is_empty())
    }

    /// A token with these header and claims JSON and this signature, put together by hand: for
    /// the algorithms `mint` never uses.
    fn forged(header: &str, claims: &str, signature: &str) -> String {
        use base64::Engine;
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        format!("{}.{}.{signature}", encode(header), encode(claims))
    }

    #[test]
    fn a_minted_token_verifies_with_its_name_expiry_and_rooms() {
        let token = mint(SECRET, "alice", IN_AN_HOUR, Some(vec!["rust".to_owned()])).unwrap();
        let identity = verify(&token).unwrap();
        assert_eq!(identity.name, "alice");
        assert_eq!(identity.expires_at_ms, IN_AN_HOUR * 1000);
        assert!(identity.may_enter("rust") && !identity.may_enter("lobby"));
        assert!(verify(&mint(SECRET, "bob", IN_AN_HOUR, None).unwrap()).unwrap().may_enter("anywhere"));
    }

    #[test]
    fn forged_expired_and_malformed_tokens_are_refused_with_their_reason() {
        assert_eq!(
            verify(&mint(b"another secret, also 32 bytes long.", "alice", IN_AN_HOUR, None).unwrap()),
            Err(TokenError::BadSignature)
        );
        assert_eq!(verify(&mint(SECRET, "alice", NOW_MS / 1000, None).unwrap()), Err(TokenError::Expired));
        assert_eq!(verify(&mint(SECRET, "", IN_AN_HOUR, None).unwrap()), Err(TokenError::BadSubject));
        assert_eq!(verify("not.a.token"), Err(TokenError::Malformed));
        assert_eq!(verify(""), Err(TokenError::Malformed));
        let claims = format!(r#"{{"sub":"alice","exp":{IN_AN_HOUR}}}"#);
        assert_eq!(
            verify(&forged(r#"{"alg":"none","typ":"JWT"}"#, &claims, "")),
            Err(TokenError::WrongAlgorithm)
        );
        assert_eq!(
            verify(&forged(r#"{"alg":"RS256","typ":"JWT"}"#, &claims, "c2ln")),
            Err(TokenError::WrongAlgorithm)
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Verifier::new(b"short").is_err());
        assert!(mint(b"", "alice", IN_AN_HOUR, None).is_err());
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        // Sign claims without `exp` with the right key: only the missing claim is wrong.
        #[derive(Serialize)]
        struct NoExp<'a> {
            sub: &'a str,
        }
        let key = EncodingKey::from_secret(SECRET).unwrap();
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &NoExp { sub: "alice" }, &key).unwrap();
        assert_eq!(verify(&token), Err(TokenError::NoExpiry));
    }
}
