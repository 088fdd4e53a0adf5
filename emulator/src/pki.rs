//! Key material, generated at first start and kept in the state directory: the CA that clients must trust
//! (azure_identity insists on https authority hosts), the server certificate it signs, and the RSA key that
//! signs access tokens (RS256, as Entra signs them).

use std::path::{Path, PathBuf};

use aws_lc_rs::{
    encoding::AsDer,
    rsa::{KeyPair, KeySize},
    signature::KeyPair as _,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair as CertKey, KeyUsagePurpose,
    SanType,
};

pub struct Pki {
    pub ca_file: PathBuf,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// PKCS#8 PEM of the token-signing key.
    pub signing_key_pem: String,
    /// The signing key's JWK parameters.
    pub jwk_n: String,
    pub jwk_e: String,
    /// Key id, the JWK thumbprint-like digest of the public key.
    pub kid: String,
}

impl Pki {
    /// Loads the key material from `dir`, generating what is missing. The server certificate names
    /// localhost, 127.0.0.1, ::1 and `extra_names`.
    pub fn load_or_create(dir: &Path, extra_names: &[String]) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca_file = dir.join("ca.crt");
        let ca_key_file = dir.join("ca.key");
        if !ca_file.exists() || !ca_key_file.exists() {
            let key = CertKey::generate()?;
            let mut params = CertificateParams::default();
            params
                .distinguished_name
                .push(DnType::CommonName, "azure-emulator local CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_after = rcgen::date_time_ymd(2036, 1, 1);
            let cert = params.self_signed(&key)?;
            write_private(&ca_key_file, &key.serialize_pem())?;
            std::fs::write(&ca_file, cert.pem())?;
        }
        let ca_key = CertKey::from_pem(&std::fs::read_to_string(&ca_key_file)?)?;
        let ca_der = rustls_pki_der(&std::fs::read_to_string(&ca_file)?)?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key)?;

        // The server certificate is cheap: issue a fresh one each start, so that new names take effect.
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        names.extend(extra_names.iter().cloned());
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "azure-emulator");
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        let server_key = CertKey::generate()?;
        let server_cert = params.signed_by(&server_key, &issuer)?;

        let signing_file = dir.join("token-signing.key");
        if !signing_file.exists() {
            let key = KeyPair::generate(KeySize::Rsa2048)
                .map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
            let der = key
                .as_der()
                .map_err(|_| anyhow::anyhow!("RSA key encoding failed"))?;
            write_private(&signing_file, &pem("PRIVATE KEY", der.as_ref()))?;
        }
        let signing_key_pem = std::fs::read_to_string(&signing_file)?;
        let der = pem_body(&signing_key_pem)?;
        let key =
            KeyPair::from_pkcs8(&der).map_err(|e| anyhow::anyhow!("token-signing.key: {e}"))?;
        let public = key.public_key();
        let jwk_n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let jwk_e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let kid = crate::state::sha256_hex(&jwk_n)[..32].to_string();

        Ok(Pki {
            ca_file,
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            signing_key_pem,
            jwk_n,
            jwk_e,
            kid,
        })
    }
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

fn pem_body(text: &str) -> anyhow::Result<Vec<u8>> {
    Ok(pem::parse(text)?.into_contents())
}

fn rustls_pki_der(pem: &str) -> anyhow::Result<rustls::pki_types::CertificateDer<'static>> {
    Ok(rustls::pki_types::CertificateDer::from(pem_body(pem)?))
}
