//! Certificate credentials: an application's key credentials (Graph's `keyCredential`, built from an X.509
//! certificate) and the client assertions signed with them that the token endpoint accepts.
//!
//! Sources:
//! - keyCredential: Graph v1.0 CSDL (`/work/shared/azure-specs/graph/v1.0/cleanMetadata.xml`,
//!   `microsoft.graph.keyCredential`) and Learn, *keyCredential resource type*: `customKeyIdentifier` is the
//!   certificate's thumbprint, `key` its base64 DER, `type` `AsymmetricX509Cert`, `usage` `Verify`; "the value
//!   of the key property is always null" when an application is read (Learn, *keyCredential*, property `key`).
//! - Client assertions: Learn, *Microsoft identity platform application authentication certificate
//!   credentials* (`entra/identity-platform/certificate-credentials`): header `alg` RS256 or PS256, `x5t`
//!   (base64url SHA-1 thumbprint) or `x5t#S256` (base64url SHA-256 thumbprint); claims `aud` (the token
//!   endpoint), `exp`, `iss` and `sub` (the client id), `jti`, `nbf`, `iat`.

use aws_lc_rs::{digest, signature};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jiff::Timestamp;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::state::KeyCredential;

/// How far clocks may disagree when an assertion's `exp` and `nbf` are judged. Entra does not document its
/// tolerance; Microsoft.IdentityModel's default `TokenValidationParameters.ClockSkew` is 5 minutes, and Q&A
/// answers about AADSTS700024 cite the same.
pub const CLOCK_SKEW_SECONDS: i64 = 300;

/// A certificate as PEM (`-----BEGIN CERTIFICATE-----`), made into a key credential. Start and end default to
/// the certificate's validity, as Graph does when they are not given.
pub fn key_credential_from_pem(
    pem_text: &str,
    key_id: Option<String>,
    display_name: Option<String>,
) -> anyhow::Result<KeyCredential> {
    let der = pem::parse_many(pem_text)?
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .ok_or_else(|| anyhow::anyhow!("no CERTIFICATE block in the PEM"))?
        .into_contents();
    key_credential_from_der(&der, key_id, display_name)
}

pub fn key_credential_from_der(
    der: &[u8],
    key_id: Option<String>,
    display_name: Option<String>,
) -> anyhow::Result<KeyCredential> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let validity = cert.validity();
    let start = Timestamp::from_second(validity.not_before.timestamp())?;
    let end = Timestamp::from_second(validity.not_after.timestamp())?;
    // Graph names a certificate uploaded without a name by its subject ("CN=...").
    let display_name = display_name.or_else(|| Some(cert.subject().to_string()));
    Ok(KeyCredential {
        key_id: key_id.unwrap_or_else(crate::state::new_id),
        custom_key_identifier: STANDARD.encode(sha1(der)),
        display_name,
        r#type: "AsymmetricX509Cert".into(),
        usage: "Verify".into(),
        key: STANDARD.encode(der),
        start_date_time: start,
        end_date_time: end,
        // Seeded unless Graph's handlers say otherwise (they set it for the keys they add).
        replicating_since: None,
    })
}

/// A thumbprint function: SHA-1 for `x5t`, SHA-256 for `x5t#S256`.
type Digest = fn(&[u8]) -> Vec<u8>;

fn sha1(bytes: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .to_vec()
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, bytes).as_ref().to_vec()
}

/// The claims a certificate assertion must carry.
#[derive(Debug, Deserialize)]
pub struct CertClaims {
    pub iss: String,
    pub sub: String,
    #[serde(deserialize_with = "crate::jwt::one_or_many")]
    pub aud: Vec<String>,
    /// Seconds, possibly with a fraction (MSAL Python sends `time.time()` unrounded; RFC 7519 allows it).
    pub exp: f64,
    #[serde(default)]
    pub nbf: Option<f64>,
    #[serde(default)]
    pub jti: Option<String>,
}

/// Why a certificate assertion was refused; the token endpoint turns each into Entra's error.
#[derive(Debug, PartialEq, Eq)]
pub enum CertProblem {
    Malformed(&'static str),
    /// No registered key credential has the thumbprint in the header (the thumbprint, hex, for the message).
    UnknownKey(String),
    BadSignature,
    /// The certificate is outside its validity (the thumbprint and the credential's start and end).
    KeyExpired(String, Timestamp, Timestamp),
    WrongAudience(String),
    OutsideTimeRange,
}

/// What the caller knows about where the assertion was sent: the token endpoints it may name.
pub struct Expected<'a> {
    pub audiences: &'a [String],
    pub now: Timestamp,
}

/// Verifies a certificate-signed client assertion against an application's key credentials.
pub fn verify(
    assertion: &str,
    keys: &[KeyCredential],
    expected: &Expected,
) -> Result<CertClaims, CertProblem> {
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| CertProblem::Malformed("JWT token is invalid or malformed."))?;
    let claims = jsonwebtoken::dangerous::insecure_decode::<CertClaims>(assertion)
        .map_err(|_| CertProblem::Malformed("JWT token is invalid or malformed."))?
        .claims;
    let (key, thumbprint) = find_key(&header, keys)?;
    let der = STANDARD
        .decode(&key.key)
        .map_err(|_| CertProblem::BadSignature)?;
    check_signature(assertion, header.alg, &der)?;
    let now = expected.now;
    if key.end_date_time <= now || key.start_date_time > now {
        return Err(CertProblem::KeyExpired(
            thumbprint,
            key.start_date_time,
            key.end_date_time,
        ));
    }
    let aud_ok = claims.aud.iter().any(|a| {
        expected.audiences.iter().any(|e| {
            e.trim_end_matches('/')
                .eq_ignore_ascii_case(a.trim_end_matches('/'))
        })
    });
    if !aud_ok {
        return Err(CertProblem::WrongAudience(claims.aud.join(",")));
    }
    let now_s = now.as_second() as f64;
    let skew = CLOCK_SKEW_SECONDS as f64;
    if claims.exp + skew <= now_s || claims.nbf.is_some_and(|nbf| nbf - skew > now_s) {
        return Err(CertProblem::OutsideTimeRange);
    }
    if claims.jti.as_deref().is_none_or(str::is_empty) {
        return Err(CertProblem::Malformed(
            "The client assertion must contain a 'jti' claim.",
        ));
    }
    Ok(claims)
}

/// The key credential the header's `x5t#S256` or `x5t` names, and its thumbprint as Entra prints it (hex).
fn find_key<'k>(
    header: &jsonwebtoken::Header,
    keys: &'k [KeyCredential],
) -> Result<(&'k KeyCredential, String), CertProblem> {
    let (wanted, digest): (Vec<u8>, Digest) = match (&header.x5t_s256, &header.x5t) {
        (Some(s256), _) => (decode_thumbprint(s256)?, sha256),
        (None, Some(s1)) => (decode_thumbprint(s1)?, sha1),
        // .NET's X509SigningCredentials (Learn's proof-of-possession sample) names the key by `kid`, the
        // certificate's SHA-1 thumbprint in hex.
        (None, None) => match header.kid.as_deref().and_then(decode_hex) {
            Some(print) => (print, sha1),
            None => {
                return Err(CertProblem::Malformed(
                    "The client assertion header must contain 'x5t' or 'x5t#S256'.",
                ));
            }
        },
    };
    let hex: String = wanted.iter().map(|b| format!("{b:02X}")).collect();
    keys.iter()
        .find(|k| {
            k.usage == "Verify"
                && STANDARD
                    .decode(&k.key)
                    .is_ok_and(|der| digest(&der) == wanted)
        })
        .map(|k| (k, hex.clone()))
        .ok_or(CertProblem::UnknownKey(hex))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 40 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// base64url as the spec says; some clients send standard base64 (with `+`, `/` or padding), which Entra
/// also reads (Learn Q&A on AADSTS700027 shows both spellings being matched).
fn decode_thumbprint(text: &str) -> Result<Vec<u8>, CertProblem> {
    let trimmed = text.trim().trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
        .map_err(|_| CertProblem::Malformed("The client assertion's 'x5t' is not base64url."))
}

fn check_signature(assertion: &str, alg: Algorithm, cert_der: &[u8]) -> Result<(), CertProblem> {
    let algorithm: &'static dyn signature::VerificationAlgorithm = match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        _ => return Err(CertProblem::BadSignature),
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|_| CertProblem::BadSignature)?;
    // For RSA the subject public key bit string is the PKCS#1 RSAPublicKey that aws-lc-rs expects.
    let public_key = cert.public_key().subject_public_key.data.to_vec();
    let (signing_input, sig) = assertion
        .rsplit_once('.')
        .ok_or(CertProblem::BadSignature)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| CertProblem::BadSignature)?;
    signature::UnparsedPublicKey::new(algorithm, public_key)
        .verify(signing_input.as_bytes(), &sig)
        .map_err(|_| CertProblem::BadSignature)
}

/// The audience of addKey/removeKey proofs: the legacy Azure AD Graph's application id (Learn, *application:
/// addKey*, "proof" and *Generate proof-of-possession tokens for rolling keys*).
pub const PROOF_AUDIENCE: &str = "00000002-0000-0000-c000-000000000000";
/// How long a proof may be valid: at most 10 minutes (same pages).
const PROOF_MAX_LIFETIME_SECONDS: f64 = 600.0;

/// A proof's claims (Learn's sample sets no `sub`).
#[derive(Debug, Deserialize)]
struct ProofClaims {
    iss: String,
    #[serde(deserialize_with = "crate::jwt::one_or_many")]
    aud: Vec<String>,
    exp: f64,
    #[serde(default)]
    nbf: Option<f64>,
}

/// Verifies the proof of possession that addKey and removeKey require: a JWT signed with one of the
/// application's current certificates, `aud` [`PROOF_AUDIENCE`], `iss` the application's object id, valid now
/// and for at most 10 minutes. The reason is for the emulator's own error text.
pub fn verify_proof(
    proof: &str,
    keys: &[KeyCredential],
    app_object_id: &str,
    now: Timestamp,
) -> Result<(), &'static str> {
    let header = jsonwebtoken::decode_header(proof).map_err(|_| "the proof is not a JWT")?;
    let claims = jsonwebtoken::dangerous::insecure_decode::<ProofClaims>(proof)
        .map_err(|_| "the proof lacks iss, aud or exp")?
        .claims;
    let (key, _) =
        find_key(&header, keys).map_err(|_| "the proof's key is not one of the application's")?;
    let der = STANDARD.decode(&key.key).map_err(|_| "unreadable key")?;
    check_signature(proof, header.alg, &der).map_err(|_| "the proof's signature is not valid")?;
    if key.end_date_time <= now || key.start_date_time > now {
        return Err("the certificate that signed the proof is not valid now");
    }
    if !claims.aud.iter().any(|a| a == PROOF_AUDIENCE) {
        return Err("the proof's audience must be 00000002-0000-0000-c000-000000000000");
    }
    if !claims.iss.eq_ignore_ascii_case(app_object_id) {
        return Err("the proof's issuer must be the application's object id");
    }
    let now_s = now.as_second() as f64;
    let skew = CLOCK_SKEW_SECONDS as f64;
    let nbf = claims.nbf.ok_or("the proof has no nbf")?;
    if claims.exp + skew <= now_s || nbf - skew > now_s {
        return Err("the proof is not within its valid time range");
    }
    if claims.exp - nbf > PROOF_MAX_LIFETIME_SECONDS {
        return Err("the proof's lifetime exceeds 10 minutes");
    }
    Ok(())
}
