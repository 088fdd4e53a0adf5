//! Access tokens: issuing (RS256, Entra's claim set) and checking them on Graph and ARM requests; and
//! verifying workload-identity client assertions against their issuer's published keys.

use std::{collections::HashMap, time::Duration};

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::config::TrustedIssuer;

pub const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";
/// Graph's application id, which Entra also accepts as its audience.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
pub const ARM_AUDIENCES: &[&str] = &[
    "https://management.azure.com/",
    "https://management.azure.com",
    "https://management.core.windows.net/",
];

/// Key Vault's resources, one per cloud (public, US Government, China): what its `WWW-Authenticate`
/// challenge names and what its tokens carry as `aud`, without a trailing slash (Learn, *Authentication,
/// requests and responses*; Key Vault's own AKV10022 message names `https://vault.azure.net`).
pub const KEYVAULT_RESOURCES: &[&str] = &[
    "https://vault.azure.net",
    "https://vault.usgovcloudapi.net",
    "https://vault.azure.cn",
];

/// Which API a token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Graph,
    Arm,
    KeyVault,
}

impl Api {
    /// The API a requested resource (scope without `/.default`) names, if any.
    pub fn for_resource(resource: &str) -> Option<Api> {
        let r = resource.trim_end_matches('/');
        if r.eq_ignore_ascii_case(GRAPH_AUDIENCE) || r.eq_ignore_ascii_case(GRAPH_APP_ID) {
            Some(Api::Graph)
        } else if ARM_AUDIENCES
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(r))
        {
            Some(Api::Arm)
        } else if KEYVAULT_RESOURCES.iter().any(|k| k.eq_ignore_ascii_case(r)) {
            Some(Api::KeyVault)
        } else {
            None
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub tid: String,
    pub oid: String,
    pub sub: String,
    pub appid: String,
    pub azp: String,
    /// 1: client secret, 2: certificate or federated assertion.
    pub appidacr: String,
    pub idtyp: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    pub ver: String,
    pub uti: String,
}

/// Signs and checks the emulator's own tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
}

impl TokenKeys {
    pub fn new(pki: &crate::pki::Pki) -> anyhow::Result<TokenKeys> {
        Ok(TokenKeys {
            encoding: EncodingKey::from_rsa_pem(pki.signing_key_pem.as_bytes())?,
            decoding: DecodingKey::from_rsa_components(&pki.jwk_n, &pki.jwk_e)?,
            kid: pki.kid.clone(),
        })
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        encode(&header, claims, &self.encoding).expect("signing with a valid RSA key")
    }

    /// Checks signature and lifetime; the audience is the caller's to judge.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenProblem> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_aud = false;
        validation.leeway = 0;
        match decode::<Claims>(token, &self.decoding, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(TokenProblem::Expired)
            }
            Err(_) => Err(TokenProblem::Invalid),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenProblem {
    Missing,
    Invalid,
    Expired,
    WrongAudience,
}

/// The claims of a client assertion that matter for matching a federated identity credential.
#[derive(Debug, Deserialize)]
pub struct AssertionClaims {
    pub iss: String,
    pub sub: String,
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// NumericDate may have a fraction (RFC 7519 section 2), and MSAL Python sends `time.time()` as it is.
    pub exp: f64,
    #[serde(default)]
    pub nbf: Option<f64>,
}

pub(crate) fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[derive(Debug)]
pub enum AssertionProblem {
    Malformed,
    /// The issuer's keys could not be obtained.
    IssuerUnreachable(String),
    BadSignature,
    Expired,
}

/// Reads an assertion's claims without verifying it, to find the credential it claims to match.
pub fn peek_assertion(assertion: &str) -> Result<AssertionClaims, AssertionProblem> {
    jsonwebtoken::dangerous::insecure_decode::<AssertionClaims>(assertion)
        .map(|d| d.claims)
        .map_err(|_| AssertionProblem::Malformed)
}

/// Fetches and caches issuers' signing keys (OIDC discovery, then JWKS), or uses configured ones.
pub struct IssuerKeys {
    trusted: Mutex<Vec<TrustedIssuer>>,
    cache: Mutex<HashMap<String, (std::time::Instant, jsonwebtoken::jwk::JwkSet)>>,
}

#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
}

impl IssuerKeys {
    pub fn new(trusted: Vec<TrustedIssuer>) -> Self {
        IssuerKeys {
            trusted: Mutex::new(trusted),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Trusts another issuer (or replaces how one is trusted); its cached keys are dropped.
    pub fn add(&self, issuer: TrustedIssuer) {
        self.cache.lock().remove(&issuer.issuer);
        let mut trusted = self.trusted.lock();
        trusted.retain(|t| t.issuer != issuer.issuer);
        trusted.push(issuer);
    }

    fn trusted(&self, issuer: &str) -> Option<TrustedIssuer> {
        self.trusted
            .lock()
            .iter()
            .find(|t| t.issuer == issuer)
            .cloned()
    }

    fn client_for(&self, issuer: &str) -> Result<reqwest::Client, AssertionProblem> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if let Some(ca) = self.trusted(issuer).and_then(|t| t.ca_file) {
            let pem = std::fs::read(&ca)
                .map_err(|e| AssertionProblem::IssuerUnreachable(format!("{ca}: {e}")))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| AssertionProblem::IssuerUnreachable(format!("{ca}: {e}")))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder
            .build()
            .map_err(|e| AssertionProblem::IssuerUnreachable(e.to_string()))
    }

    async fn jwks(&self, issuer: &str) -> Result<jsonwebtoken::jwk::JwkSet, AssertionProblem> {
        if let Some((at, set)) = self.cache.lock().get(issuer)
            && at.elapsed() < Duration::from_secs(300)
        {
            return Ok(set.clone());
        }
        let client = self.client_for(issuer)?;
        let unreachable = |e: reqwest::Error| AssertionProblem::IssuerUnreachable(e.to_string());
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let discovery: Discovery = client
            .get(&discovery_url)
            .send()
            .await
            .map_err(unreachable)?
            .error_for_status()
            .map_err(unreachable)?
            .json()
            .await
            .map_err(unreachable)?;
        let set: jsonwebtoken::jwk::JwkSet = client
            .get(&discovery.jwks_uri)
            .send()
            .await
            .map_err(unreachable)?
            .error_for_status()
            .map_err(unreachable)?
            .json()
            .await
            .map_err(unreachable)?;
        self.cache
            .lock()
            .insert(issuer.to_string(), (std::time::Instant::now(), set.clone()));
        Ok(set)
    }

    /// Verifies an assertion's signature and lifetime with its issuer's keys.
    pub async fn verify(&self, assertion: &str, issuer: &str) -> Result<(), AssertionProblem> {
        let header = decode_header(assertion).map_err(|_| AssertionProblem::Malformed)?;
        let mut validation = Validation::new(header.alg);
        validation.validate_aud = false;
        validation.leeway = 60;
        let key = match self.trusted(issuer).and_then(|t| t.public_key_file) {
            Some(file) => {
                let pem = std::fs::read(&file)
                    .map_err(|e| AssertionProblem::IssuerUnreachable(format!("{file}: {e}")))?;
                DecodingKey::from_rsa_pem(&pem)
                    .or_else(|_| DecodingKey::from_ec_pem(&pem))
                    .map_err(|e| AssertionProblem::IssuerUnreachable(format!("{file}: {e}")))?
            }
            None => {
                let set = self.jwks(issuer).await?;
                let jwk = match &header.kid {
                    Some(kid) => set.find(kid),
                    None => set.keys.first(),
                }
                .ok_or(AssertionProblem::BadSignature)?;
                DecodingKey::from_jwk(jwk).map_err(|_| AssertionProblem::BadSignature)?
            }
        };
        match decode::<serde_json::Value>(assertion, &key, &validation) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(AssertionProblem::Expired)
            }
            Err(_) => Err(AssertionProblem::BadSignature),
        }
    }
}
