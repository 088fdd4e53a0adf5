//! A certificate credential as Entra uses it: an RSA key pair and its X.509 certificate, the thumbprints Graph
//! and the portal name it by, the proof of possession that addKey and removeKey want, and the client assertion
//! the token endpoint accepts in place of a secret.
//!
//! Sources:
//! - Learn, *Microsoft identity platform application authentication certificate credentials*
//!   (`entra/identity-platform/certificate-credentials`): the assertion's header `alg` "should be PS256" with
//!   `x5t#S256` (older revisions of the page: RS256 with `x5t`); claims `aud` (the token endpoint), `exp`,
//!   `iss` = `sub` = the client id, `jti`, `nbf`, `iat`; signed "using PSS padding". Both algorithms are RSA, so
//!   only RSA keys can sign in with a certificate.
//! - Learn, *Generate proof-of-possession tokens for rolling keys*
//!   (`graph/application-rollkey-prooftoken`): `aud` 00000002-0000-0000-c000-000000000000, `iss` the
//!   application's object id, `nbf` now, `exp` at most 10 minutes later, signed with a current certificate.
//! - Learn, *keyCredential resource type*: `customKeyIdentifier` is the certificate's thumbprint.
//! - azure-cli `az ad sp create-for-rbac --create-cert` (`role/custom.py`, `_create_self_signed_cert`): an
//!   RSA 2048 key and a self-signed certificate with subject `CN=<name>`, written to one file holding the
//!   private key and then the certificate (`fileWithCertAndPrivateKey`).

use aws_lc_rs::{digest, encoding::AsDer, rsa::KeyPair as RsaKeyPair, signature::KeyPair as _};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jiff::{SignedDuration, Timestamp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// The audience of addKey/removeKey proofs: the legacy Azure AD Graph's application id.
pub const PROOF_AUDIENCE: &str = "00000002-0000-0000-c000-000000000000";

/// A proof may live at most 10 minutes (Learn, *Generate proof-of-possession tokens*); a little less, so that
/// rounding on either side cannot make it longer.
const PROOF_LIFETIME: SignedDuration = SignedDuration::from_secs(9 * 60 + 30);

/// How long a client assertion is valid: Learn says "5-10 minutes after nbf at most".
const ASSERTION_LIFETIME: SignedDuration = SignedDuration::from_mins(10);

/// Why Entra needs RSA, for the errors that refuse other keys.
const RSA_ONLY: &str = "Entra accepts only RS256/PS256 client assertions, so the key must be RSA";

/// An RSA private key and its certificate. Debug and Display show the thumbprint only, never the key.
#[derive(Clone)]
pub struct Material {
    /// PKCS#8 (`-----BEGIN PRIVATE KEY-----`), normalized from whatever form was read.
    private_key_pem: String,
    /// The leaf certificate only, re-encoded from its DER.
    certificate_pem: String,
    der: Vec<u8>,
    not_before: Timestamp,
    not_after: Timestamp,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("thumbprint", &self.thumbprint_hex())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "certificate {}", self.thumbprint_hex())
    }
}

fn pem_text(tag: &str, der: Vec<u8>) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn sha1(bytes: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .to_vec()
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, bytes).as_ref().to_vec()
}

/// A private key block, read as RSA. Errors never quote the key.
fn read_key(tag: &str, der: &[u8]) -> Result<RsaKeyPair, String> {
    match tag {
        "PRIVATE KEY" => RsaKeyPair::from_pkcs8(der)
            .map_err(|_| format!("the private key is not a readable RSA key: {RSA_ONLY}")),
        "RSA PRIVATE KEY" => RsaKeyPair::from_der(der)
            .map_err(|_| "the RSA PRIVATE KEY block is not readable".to_string()),
        "EC PRIVATE KEY" => Err(format!("the private key is an EC key: {RSA_ONLY}")),
        _ => Err(
            "the private key is encrypted: give it unencrypted (PKCS#8 PRIVATE KEY or PKCS#1 RSA PRIVATE KEY)"
                .to_string(),
        ),
    }
}

/// The private keys and certificates of one PEM text, added to what `key` and `certs` hold already.
fn collect(
    text: &str,
    key: &mut Option<RsaKeyPair>,
    certs: &mut Vec<Vec<u8>>,
) -> Result<(), String> {
    // pem's error may quote the offending bytes, which could be the key's: say only that it is malformed.
    let blocks = pem::parse_many(text).map_err(|_| "the PEM text is malformed".to_string())?;
    for block in blocks {
        match block.tag() {
            "CERTIFICATE" => certs.push(block.into_contents()),
            tag @ ("PRIVATE KEY"
            | "RSA PRIVATE KEY"
            | "EC PRIVATE KEY"
            | "ENCRYPTED PRIVATE KEY") => {
                if key.is_some() {
                    return Err("there is more than one private key".into());
                }
                *key = Some(read_key(tag, block.contents())?);
            }
            // Anything else (parameters, a CSR) is not ours to judge.
            _ => {}
        }
    }
    Ok(())
}

impl Material {
    /// A fresh RSA 2048 key pair and a self-signed certificate for `CN=common_name`, valid from `start` to
    /// `end`, as `az ad sp create-for-rbac --create-cert` makes one. RSA because Entra's assertions are RS256
    /// or PS256 (Learn, *certificate credentials*, header `alg`).
    pub fn generate(
        common_name: &str,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<Material, String> {
        if end <= start {
            return Err("the certificate's end must be after its start".into());
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .map_err(|e| format!("cannot generate an RSA key: {e}"))?;
        let mut params = rcgen::CertificateParams::default();
        let mut name = rcgen::DistinguishedName::new();
        // RFC 5280's upper bound for a common name is 64 characters; a display name may be longer.
        let common_name: String = common_name.chars().take(64).collect();
        name.push(rcgen::DnType::CommonName, common_name);
        params.distinguished_name = name;
        let time = |t: Timestamp| {
            time::OffsetDateTime::from_unix_timestamp(t.as_second())
                .map_err(|_| format!("{t} is outside a certificate's range"))
        };
        params.not_before = time(start)?;
        params.not_after = time(end)?;
        // A random positive serial (RFC 5280 §4.1.2.2: unique per issuer, at most 20 octets).
        let mut serial = uuid::Uuid::new_v4().into_bytes().to_vec();
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("cannot sign the certificate: {e}"))?;
        let rsa = RsaKeyPair::from_pkcs8(&key.serialize_der())
            .map_err(|_| "the generated key is not readable".to_string())?;
        Self::assemble(&rsa, cert.der().to_vec())
    }

    /// A bundle holding one private key (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`) and one or more
    /// certificates, in any order; the first certificate is the leaf, the one registered with Entra.
    pub fn from_pem(text: &str) -> Result<Material, String> {
        let (mut key, mut certs) = (None, Vec::new());
        collect(text, &mut key, &mut certs)?;
        let key = key.ok_or(
            "no private key (a PKCS#8 PRIVATE KEY or PKCS#1 RSA PRIVATE KEY block) in the PEM text",
        )?;
        let leaf = certs
            .into_iter()
            .next()
            .ok_or("no CERTIFICATE block in the PEM text")?;
        Self::assemble(&key, leaf)
    }

    /// The same from a `kubernetes.io/tls` Secret: `tls.crt` (the leaf first, then any chain) and `tls.key`.
    pub fn from_tls(crt: &str, key: &str) -> Result<Material, String> {
        let (mut private, mut certs, mut stray) = (None, Vec::new(), Vec::new());
        collect(key, &mut private, &mut stray).map_err(|e| format!("tls.key: {e}"))?;
        let private = private.ok_or("tls.key holds no private key")?;
        let mut none = None;
        collect(crt, &mut none, &mut certs).map_err(|e| format!("tls.crt: {e}"))?;
        let leaf = certs
            .into_iter()
            .next()
            .ok_or("tls.crt holds no CERTIFICATE block")?;
        Self::assemble(&private, leaf)
    }

    /// Checks that the certificate is RSA and is the key's, and keeps both.
    fn assemble(key: &RsaKeyPair, der: Vec<u8>) -> Result<Material, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| "the certificate is not a readable X.509 certificate".to_string())?;
        let spki = cert.public_key();
        if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
            return Err(format!(
                "the certificate's public key is not RSA: {RSA_ONLY}"
            ));
        }
        // For RSA, both are the PKCS#1 RSAPublicKey.
        if spki.subject_public_key.data.as_ref() != key.public_key().as_ref() {
            return Err("the private key does not belong to the certificate".into());
        }
        let validity = cert.validity();
        let stamp = |t: i64| Timestamp::from_second(t).map_err(|e| e.to_string());
        let not_before = stamp(validity.not_before.timestamp())?;
        let not_after = stamp(validity.not_after.timestamp())?;
        let pkcs8 = key
            .as_der()
            .map_err(|_| "the private key cannot be encoded as PKCS#8".to_string())?;
        Ok(Material {
            private_key_pem: pem_text("PRIVATE KEY", pkcs8.as_ref().to_vec()),
            certificate_pem: pem_text("CERTIFICATE", der.clone()),
            der,
            not_before,
            not_after,
        })
    }

    /// The private key then the certificate, as az writes `fileWithCertAndPrivateKey`.
    pub fn bundle(&self) -> String {
        format!("{}{}", self.private_key_pem, self.certificate_pem)
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// PKCS#8, normalized (a PKCS#1 key read from a bundle is re-encoded), LF line endings.
    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }

    pub fn certificate_der(&self) -> &[u8] {
        &self.der
    }

    /// Base64 of the SHA-1 of the DER: Graph's `customKeyIdentifier`.
    pub fn thumbprint(&self) -> String {
        STANDARD.encode(sha1(&self.der))
    }

    /// Uppercase hex SHA-1, as the portal and `az ad app credential list` show it.
    pub fn thumbprint_hex(&self) -> String {
        sha1(&self.der).iter().map(|b| format!("{b:02X}")).collect()
    }

    pub fn not_before(&self) -> Timestamp {
        self.not_before
    }

    pub fn not_after(&self) -> Timestamp {
        self.not_after
    }

    fn sign(&self, mut header: Header, claims: &serde_json::Value) -> Result<String, String> {
        let key = EncodingKey::from_rsa_pem(self.private_key_pem.as_bytes())
            .map_err(|_| "the private key cannot sign".to_string())?;
        header.typ = Some("JWT".into());
        header.x5t = Some(URL_SAFE_NO_PAD.encode(sha1(&self.der)));
        jsonwebtoken::encode(&header, claims, &key)
            .map_err(|e| format!("cannot sign the token ({:?})", e.kind()))
    }

    /// The proof of possession that `addKey` and `removeKey` want: RS256 as in Learn's sample (an
    /// `X509SigningCredentials`, whose default is RS256), `x5t` naming this certificate.
    pub fn proof(&self, app_object_id: &str, now: Timestamp) -> Result<String, String> {
        let claims = json!({
            "aud": PROOF_AUDIENCE,
            "iss": app_object_id,
            "nbf": now.as_second(),
            "exp": (now + PROOF_LIFETIME).as_second(),
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        self.sign(Header::new(Algorithm::RS256), &claims)
    }

    /// A client assertion for the token endpoint. PS256 with `x5t#S256`, as the current Learn page asks (and
    /// MSAL sends); `x5t` too, for readers of the page's earlier revision.
    pub fn client_assertion(
        &self,
        client_id: &str,
        token_endpoint: &str,
        now: Timestamp,
    ) -> Result<String, String> {
        let claims = json!({
            "aud": token_endpoint,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now.as_second(),
            "iat": now.as_second(),
            "exp": (now + ASSERTION_LIFETIME).as_second(),
        });
        let mut header = Header::new(Algorithm::PS256);
        header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(sha256(&self.der)));
        self.sign(header, &claims)
    }
}

#[cfg(test)]
mod tests {
    use azure_emulator::certs;

    use super::*;

    fn day() -> (Timestamp, Timestamp) {
        let now = Timestamp::now();
        (
            now - SignedDuration::from_mins(5),
            now + SignedDuration::from_hours(24),
        )
    }

    fn generated() -> Material {
        let (start, end) = day();
        Material::generate("entra-operator-test", start, end).unwrap()
    }

    /// The emulator's view of the certificate, as if registered on an application.
    fn registered(m: &Material) -> azure_emulator::state::KeyCredential {
        certs::key_credential_from_pem(m.certificate_pem(), None, None).unwrap()
    }

    #[test]
    fn a_display_name_longer_than_a_common_name_may_be_is_cut_to_64_characters() {
        let (start, end) = day();
        let long = "é".repeat(300);
        let m = Material::generate(&long, start, end).expect("generated");
        let (_, cert) = x509_parser::parse_x509_certificate(m.certificate_der()).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap().chars().count(), 64);
    }

    #[test]
    fn a_generated_certificate_round_trips_through_its_bundle() {
        let (start, end) = day();
        let m = Material::generate("entra-operator-test", start, end).unwrap();
        assert_eq!(
            m.not_before(),
            Timestamp::from_second(start.as_second()).unwrap()
        );
        assert_eq!(
            m.not_after(),
            Timestamp::from_second(end.as_second()).unwrap()
        );
        let bundle = m.bundle();
        assert!(
            bundle.starts_with("-----BEGIN PRIVATE KEY-----"),
            "key first, as az"
        );
        let again = Material::from_pem(&bundle).unwrap();
        assert_eq!(again.thumbprint(), m.thumbprint());
        assert_eq!(again.private_key_pem(), m.private_key_pem());
        // Certificate before key reads the same.
        let reversed = format!("{}{}", m.certificate_pem(), m.private_key_pem());
        assert_eq!(
            Material::from_pem(&reversed).unwrap().thumbprint(),
            m.thumbprint()
        );
        // The thumbprint is what Graph will call customKeyIdentifier.
        assert_eq!(registered(&m).custom_key_identifier, m.thumbprint());
        assert_eq!(m.thumbprint_hex().len(), 40);
        assert_eq!(
            STANDARD.decode(m.thumbprint()).unwrap(),
            (0..40)
                .step_by(2)
                .map(|i| u8::from_str_radix(&m.thumbprint_hex()[i..i + 2], 16).unwrap())
                .collect::<Vec<_>>()
        );
        let (_, cert) = x509_parser::parse_x509_certificate(m.certificate_der()).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=entra-operator-test");
    }

    #[test]
    fn a_tls_secret_with_a_chain_reads_its_leaf() {
        let leaf = generated();
        let ca = generated();
        let crt = format!("{}{}", leaf.certificate_pem(), ca.certificate_pem());
        let m = Material::from_tls(&crt, leaf.private_key_pem()).unwrap();
        assert_eq!(m.thumbprint(), leaf.thumbprint());
        assert_eq!(m.certificate_pem(), leaf.certificate_pem(), "the leaf only");
        let err = Material::from_tls(leaf.private_key_pem(), leaf.private_key_pem()).unwrap_err();
        assert!(err.contains("tls.key") || err.contains("tls.crt"), "{err}");
        let err = Material::from_tls(&crt, "").unwrap_err();
        assert_eq!(err, "tls.key holds no private key");
    }

    #[test]
    fn a_pkcs1_key_is_read_and_normalized_to_pkcs8() {
        let m = generated();
        // PKCS#1 is the PKCS#8 body's inner key: re-read it through aws-lc-rs and encode it as such.
        let pkcs8 = pem::parse(m.private_key_pem()).unwrap().into_contents();
        let pkcs1 = pkcs1_of(&pkcs8);
        let text = format!(
            "{}{}",
            pem_text("RSA PRIVATE KEY", pkcs1),
            m.certificate_pem()
        );
        let again = Material::from_pem(&text).unwrap();
        assert_eq!(again.thumbprint(), m.thumbprint());
        assert!(
            again
                .private_key_pem()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
    }

    /// The PKCS#1 RSAPrivateKey inside a PKCS#8 PrivateKeyInfo (its OCTET STRING, the last element).
    fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
        use x509_parser::der_parser::{ber::BerObjectContent, parse_der};
        let (_, seq) = parse_der(pkcs8).unwrap();
        let items = seq.as_sequence().unwrap();
        match &items[2].content {
            BerObjectContent::OctetString(bytes) => bytes.to_vec(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let a = generated();
        let b = generated();
        let text = format!("{}{}", a.private_key_pem(), b.certificate_pem());
        let err = Material::from_pem(&text).unwrap_err();
        assert_eq!(err, "the private key does not belong to the certificate");
    }

    #[test]
    fn an_ec_key_is_refused_naming_rsa() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let text = format!("{}{}", key.serialize_pem(), cert.pem());
        let err = Material::from_pem(&text).unwrap_err();
        assert!(err.contains("RSA"), "{err}");
        assert!(!err.contains("BEGIN"), "{err}");
        // An RSA key beside an EC certificate: the certificate is refused.
        let rsa = generated();
        let err =
            Material::from_pem(&format!("{}{}", rsa.private_key_pem(), cert.pem())).unwrap_err();
        assert!(err.contains("not RSA"), "{err}");
    }

    #[test]
    fn missing_or_unreadable_parts_are_named_without_key_text() {
        let m = generated();
        assert!(
            Material::from_pem(m.certificate_pem())
                .unwrap_err()
                .contains("no private key")
        );
        assert!(
            Material::from_pem(m.private_key_pem())
                .unwrap_err()
                .contains("no CERTIFICATE")
        );
        let broken = m.bundle().replacen("MII", "M!I", 1);
        let err = Material::from_pem(&broken).unwrap_err();
        assert_eq!(err, "the PEM text is malformed");
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(
            Material::from_pem(encrypted)
                .unwrap_err()
                .contains("encrypted")
        );
    }

    #[test]
    fn debug_and_display_show_the_thumbprint_only() {
        let m = generated();
        for text in [format!("{m:?}"), m.to_string()] {
            assert!(!text.contains("PRIVATE KEY"), "{text}");
            assert!(!text.contains(&m.private_key_pem()[30..60]), "{text}");
            assert!(text.contains(&m.thumbprint_hex()), "{text}");
        }
    }

    #[test]
    fn the_proof_satisfies_the_emulators_addkey_check() {
        let m = generated();
        let keys = vec![registered(&m)];
        let app = "11111111-2222-4333-8444-555555555555";
        let now = Timestamp::now();
        let proof = m.proof(app, now).unwrap();
        certs::verify_proof(&proof, &keys, app, now).unwrap();
        assert_eq!(
            certs::verify_proof(&proof, &keys, "11111111-2222-4333-8444-000000000000", now),
            Err("the proof's issuer must be the application's object id")
        );
        let other = generated();
        assert!(certs::verify_proof(&other.proof(app, now).unwrap(), &keys, app, now).is_err());
        let header = jsonwebtoken::decode_header(&proof).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
    }

    #[test]
    fn the_client_assertion_satisfies_the_emulators_token_endpoint() {
        let m = generated();
        let keys = vec![registered(&m)];
        let endpoint = "https://login.example/tenant/oauth2/v2.0/token".to_string();
        let now = Timestamp::now();
        let assertion = m.client_assertion("client-id", &endpoint, now).unwrap();
        let audiences = [endpoint.clone()];
        let expected = certs::Expected {
            audiences: &audiences,
            now,
        };
        let claims = certs::verify(&assertion, &keys, &expected).unwrap();
        assert_eq!(
            (claims.iss.as_str(), claims.sub.as_str()),
            ("client-id", "client-id")
        );
        let header = jsonwebtoken::decode_header(&assertion).unwrap();
        assert_eq!(header.alg, Algorithm::PS256);
        assert!(header.x5t.is_some() && header.x5t_s256.is_some());
        let elsewhere = ["https://login.example/other/oauth2/v2.0/token".to_string()];
        let wrong = certs::Expected {
            audiences: &elsewhere,
            now,
        };
        assert!(matches!(
            certs::verify(&assertion, &keys, &wrong),
            Err(certs::CertProblem::WrongAudience(_))
        ));
        let later = certs::Expected {
            audiences: &audiences,
            now: now + SignedDuration::from_mins(20),
        };
        assert_eq!(
            certs::verify(&assertion, &keys, &later).unwrap_err(),
            certs::CertProblem::OutsideTimeRange
        );
    }
}
