//! The local JWT issuer and the local stand-in for the HTTP API's JWT
//! authorizer. Deployed, API Gateway validates the tokens of the `/jwt/…`
//! routes against the configured issuer's keys and hands the function the
//! claims; locally the front does the same against this issuer's JSON Web
//! Key Set (which it publishes at `/local-issuer/.well-known/jwks.json`; the
//! ES256 key is kept in `.local/jwt-es256.pk8`, made on first use), and
//! `courier-local jwt` mints tokens with it.
//!
//! Validation is what the authorizer checks: the signature (ES256 with the
//! issuer's key; any other `alg`, `none` included, is refused), `iss`, `aud`,
//! `exp` and `nbf`.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value, json};

/// The local issuer's name and the audience the local authorizer expects.
pub const LOCAL_ISSUER: &str = "https://courier-local.invalid/issuer";
pub const LOCAL_AUDIENCE: &str = "courier";
const KID: &str = "courier-local-1";

/// An ES256 issuer: signs tokens and checks them as the authorizer would.
pub struct Issuer {
    pair: EcdsaKeyPair,
    pub issuer: String,
    pub audience: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Issuer({}, {})", self.issuer, self.audience)
    }
}

impl Issuer {
    /// A new key (in memory).
    pub fn generate() -> anyhow::Result<Self> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|e| anyhow::anyhow!("generate an ES256 key: {e}"))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// The key in `path`, made there on first use.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if let Ok(bytes) = std::fs::read(path) {
            return Self::from_pkcs8(&bytes);
        }
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|e| anyhow::anyhow!("generate an ES256 key: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, pkcs8.as_ref())?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    fn from_pkcs8(bytes: &[u8]) -> anyhow::Result<Self> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, bytes)
            .map_err(|e| anyhow::anyhow!("read the ES256 key: {e}"))?;
        Ok(Self { pair, issuer: LOCAL_ISSUER.to_owned(), audience: LOCAL_AUDIENCE.to_owned() })
    }

    /// Signs `claims` (given as they are: the caller sets `iss`, `aud`, `exp`…).
    pub fn sign(&self, header: &Value, claims: &Value) -> anyhow::Result<String> {
        let head = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let sig = self.pair.sign(&SystemRandom::new(), head.as_bytes()).map_err(|e| anyhow::anyhow!("sign: {e}"))?;
        Ok(format!("{head}.{}", B64.encode(sig.as_ref())))
    }

    /// A token for `tenant` (in `claim`), valid for `ttl_s` seconds.
    pub fn mint(&self, claim: &str, tenant: &str, ttl_s: i64) -> anyhow::Result<String> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = json!({"iss": self.issuer, "aud": self.audience, "sub": format!("local:{tenant}"),
                            claim: tenant, "iat": now, "exp": now + ttl_s});
        self.sign(&json!({"alg": "ES256", "typ": "JWT", "kid": KID}), &claims)
    }

    /// The public key as a JSON Web Key Set.
    pub fn jwks(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        let (x, y) = point.get(1..).unwrap_or_default().split_at(32.min(point.len().saturating_sub(1)));
        json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
                         "x": B64.encode(x), "y": B64.encode(y)}]})
    }

    /// The token's claims if the authorizer would accept it at `now` (s),
    /// else why not.
    pub fn verify(&self, token: &str, now: i64) -> Result<Map<String, Value>, String> {
        let parts: Vec<&str> = token.split('.').collect();
        let [head, body, sig] = parts[..] else { return Err("not a JWT (three dot-separated parts)".into()) };
        let json_of = |part: &str, what: &str| -> Result<Value, String> {
            let bytes = B64.decode(part).map_err(|_| format!("the {what} is not base64url"))?;
            serde_json::from_slice(&bytes).map_err(|_| format!("the {what} is not JSON"))
        };
        let header = json_of(head, "header")?;
        match header["alg"].as_str() {
            Some("ES256") => {}
            Some(alg) => return Err(format!("alg {alg} is not accepted (ES256 only)")),
            None => return Err("the header names no alg".into()),
        }
        let sig = B64.decode(sig).map_err(|_| "the signature is not base64url".to_owned())?;
        // The key from the issuer's JWKS, as the authorizer finds it: by
        // `kid` when the token names one, else the set's only key.
        let jwks = self.jwks();
        let keys = jwks["keys"].as_array().cloned().unwrap_or_default();
        let key = match header["kid"].as_str() {
            Some(kid) => keys.iter().find(|k| k["kid"] == kid),
            None if keys.len() == 1 => keys.first(),
            None => None,
        }
        .ok_or_else(|| format!("no key {} in the issuer's JWKS", header["kid"]))?;
        let point = jwk_point(key).ok_or_else(|| "the issuer's JWKS key is not an EC P-256 key".to_owned())?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(format!("{head}.{body}").as_bytes(), &sig)
            .map_err(|_| "the signature does not verify with the issuer's key".to_owned())?;
        let Value::Object(claims) = json_of(body, "payload")? else {
            return Err("the payload is not an object".into());
        };
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(format!("issuer {} is not {}", claims.get("iss").unwrap_or(&Value::Null), self.issuer));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == self.audience,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(self.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(format!(
                "audience {} does not include {}",
                claims.get("aud").unwrap_or(&Value::Null),
                self.audience
            ));
        }
        match claims.get("exp").and_then(Value::as_i64) {
            None => return Err("the token has no exp".into()),
            Some(exp) if exp <= now => return Err(format!("the token expired at {exp} (now {now})")),
            Some(_) => {}
        }
        if let Some(nbf) = claims.get("nbf").and_then(Value::as_i64)
            && nbf > now
        {
            return Err(format!("the token is not valid before {nbf}"));
        }
        Ok(claims)
    }
}

/// An EC P-256 JWK's public point (uncompressed: `04 || x || y`).
fn jwk_point(k: &Value) -> Option<Vec<u8>> {
    if k["kty"] != "EC" || k["crv"] != "P-256" {
        return None;
    }
    let (x, y) = (B64.decode(k["x"].as_str()?).ok()?, B64.decode(k["y"].as_str()?).ok()?);
    (x.len() == 32 && y.len() == 32).then(|| [&[4u8][..], &x, &y].concat())
}

/// The claims as the HTTP API hands them to the function: every value a string.
pub fn claims_as_strings(claims: &Map<String, Value>) -> Map<String, Value> {
    claims
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.as_str().map_or_else(|| v.to_string(), str::to_owned))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorizer_accepts_only_good_tokens_and_says_why_not() {
        let issuer = Issuer::generate().expect("key");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let good = issuer.mint("courier_tenant", "tnt_0123456789abcdef", 60).expect("mint");
        let claims = issuer.verify(&good, now).expect("valid");
        assert_eq!(claims["courier_tenant"], "tnt_0123456789abcdef");
        let base = json!({"iss": LOCAL_ISSUER, "aud": LOCAL_AUDIENCE, "exp": now + 60});
        let es256 = json!({"alg": "ES256", "kid": KID});
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c[k] = v;
            issuer.sign(&es256, &c).expect("sign")
        };
        let cases = [
            (with("exp", json!(now - 1)), "expired"),
            (with("aud", json!("other")), "audience"),
            (with("iss", json!("https://evil.invalid/")), "issuer"),
            (with("nbf", json!(now + 600)), "not valid before"),
        ];
        for (token, why) in cases {
            let e = issuer.verify(&token, now).expect_err(why);
            assert!(e.contains(why), "{e}");
        }
        // alg none: a header that asks not to be checked, and no signature.
        let none = format!("{}.{}.", B64.encode(json!({"alg": "none"}).to_string()), B64.encode(base.to_string()));
        assert!(issuer.verify(&none, now).expect_err("none").contains("alg none"));
        // Another issuer's key with the same claims.
        let other = Issuer::generate().expect("key").sign(&es256, &base).expect("sign");
        assert!(issuer.verify(&other, now).expect_err("foreign").contains("signature"));
        let jwks = issuer.jwks();
        assert_eq!(jwks["keys"][0]["x"].as_str().map(str::len), Some(43));
    }
}
