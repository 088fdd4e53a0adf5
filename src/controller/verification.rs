//! Proving that Entra accepts a new credential everywhere before anyone is told to use it. A new password or
//! certificate replicates across Entra's regions for a while after it is added (observed 4 to 18 seconds,
//! microsoft-graph-docs #17966; no documented bound), and a request may reach a region that has it while the
//! next reaches one that does not (hashicorp/vault #27593: "a sliding window still sometimes gives us false
//! positives"). So a credential counts as verified only after `required` rounds in a row succeed, the first
//! and the last at least `window` apart; each round asks for a Microsoft Graph and an Azure Resource Manager
//! token, with a fresh credential object (no token cache), and a failed round starts the count again.
//!
//! The state lives in the object's status (`VerificationStatus`), so it survives restarts; `next` and
//! `record` decide purely, `round` signs in.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use super::credentials::Kind;
use crate::{
    api::common::VerificationStatus,
    azure::{Cloud, certificate::Material, credential},
};

/// How much a new credential must prove (the operator's --verify-sign-ins and --verify-window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub required: u32,
    pub window: Duration,
}

impl Default for Policy {
    /// The operator's defaults: 4 rounds over a minute.
    fn default() -> Self {
        Policy {
            required: 4,
            window: Duration::from_secs(60),
        }
    }
}

impl Policy {
    /// The time between two rounds: the window spread evenly over the rounds after the first.
    pub fn spacing(&self) -> Duration {
        match self.required {
            0 | 1 => Duration::ZERO,
            n => self.window / (n - 1),
        }
    }
}

/// What to do about a credential now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// It has proved itself.
    Verified,
    /// Try a round now.
    SignInNow,
    /// The next round is due then.
    WaitUntil(Timestamp),
}

/// What to do about credential `key_id`, from what status says of its verification.
pub fn next(
    status: Option<&VerificationStatus>,
    key_id: &str,
    now: Timestamp,
    policy: Policy,
) -> Next {
    let Some(v) = status.filter(|v| v.key_id == key_id) else {
        return Next::SignInNow;
    };
    if v.verified_time.is_some() {
        return Next::Verified;
    }
    let due = v
        .last_attempt_time
        .as_ref()
        .map(|t| add(t.0, policy.spacing()));
    match due {
        Some(due) if due > now => Next::WaitUntil(due),
        _ => Next::SignInNow,
    }
}

/// The status after a round for `key_id` at `now` that went as `outcome` (the error names Entra's code, never
/// the credential).
pub fn record(
    status: Option<&VerificationStatus>,
    key_id: &str,
    outcome: Result<(), String>,
    now: Timestamp,
    policy: Policy,
) -> VerificationStatus {
    let mut v = match status.filter(|v| v.key_id == key_id) {
        Some(v) => v.clone(),
        None => VerificationStatus {
            key_id: key_id.to_string(),
            ..Default::default()
        },
    };
    v.required = policy.required;
    v.window = format!("{}s", policy.window.as_secs());
    v.attempts = v.attempts.saturating_add(1);
    v.last_attempt_time = Some(Time(now));
    match outcome {
        Ok(()) => {
            if v.successes == 0 {
                v.first_success_time = Some(Time(now));
            }
            v.successes = v.successes.saturating_add(1);
            v.last_failure = None;
            let first = v.first_success_time.as_ref().map_or(now, |t| t.0);
            if v.successes >= policy.required && add(first, policy.window) <= now
                || policy.required <= 1
            {
                v.verified_time = Some(Time(now));
            }
        }
        Err(why) => {
            v.successes = 0;
            v.first_success_time = None;
            v.last_failure = Some(why);
        }
    }
    v
}

/// Another object's verification of `key_id` (the ServicePrincipal's, of the credential a rotation takes
/// over), when it has passed and `own` says nothing of that credential yet: taken as it is, so that a
/// credential is not verified twice.
pub fn adopted(
    own: Option<&VerificationStatus>,
    theirs: Option<&VerificationStatus>,
    key_id: &str,
) -> Option<VerificationStatus> {
    let theirs = theirs.filter(|v| v.key_id == key_id && v.verified_time.is_some())?;
    own.is_none_or(|v| v.key_id != key_id)
        .then(|| theirs.clone())
}

/// How the status says a verification stands, for a condition's message.
pub fn progress(v: &VerificationStatus) -> String {
    let failure = v
        .last_failure
        .as_deref()
        .map(|f| format!("; the last round failed: {f}"))
        .unwrap_or_default();
    format!(
        "verifying credential {}: {} of {} sign-in rounds in a row over {} succeeded ({} tried){failure}",
        v.key_id, v.successes, v.required, v.window, v.attempts
    )
}

/// The condition type that says whether the newest credential has proved itself: True while it is being
/// verified (its message says how far), False with reason Verified once it has.
pub const VERIFYING: &str = "Verifying";

/// Sets the Verifying condition from `v`.
pub fn set_condition(
    conditions: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    v: &VerificationStatus,
    generation: Option<i64>,
    now: Time,
) {
    use crate::api::conditions;
    let c = match v.verified_time {
        Some(_) => {
            conditions::condition(VERIFYING, false, "Verified", progress(v), generation, now)
        }
        None => conditions::condition(
            VERIFYING,
            true,
            "VerifyingCredential",
            progress(v),
            generation,
            now,
        ),
    };
    conditions::set_condition(conditions, c);
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    k8s_openapi::jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// The credential a round signs in with (no Debug: the text is the secret).
pub struct Candidate<'a> {
    pub key_id: &'a str,
    pub client_id: &'a str,
    pub kind: Kind,
    /// A password, or a certificate's PEM.
    pub text: &'a str,
}

/// One reconcile's part of a verification, the same for every kind that verifies: a round when one is due,
/// recorded in `verification` and in the Verifying condition of `conditions`. None once the credential has
/// passed; else when the next round is due.
pub async fn advance(
    ctx: &super::Context,
    candidate: Candidate<'_>,
    verification: &mut Option<VerificationStatus>,
    conditions: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    generation: Option<i64>,
) -> Option<Timestamp> {
    let (key, policy, now) = (candidate.key_id, ctx.verification, super::clock::now());
    let mut next = self::next(verification.as_ref(), key, now, policy);
    if next == Next::SignInNow {
        let (cloud, http, tenant) = (&ctx.cloud, &ctx.http, &ctx.tenant_id);
        let (client_id, kind, text) = (candidate.client_id, candidate.kind, candidate.text);
        let outcome = round(cloud, http, tenant, client_id, kind, text).await;
        let at = super::clock::now();
        let recorded = record(verification.as_ref(), key, outcome, at, policy);
        set_condition(conditions, &recorded, generation, Time(at));
        next = self::next(Some(&recorded), key, at, policy);
        *verification = Some(recorded);
    }
    match next {
        Next::Verified => None,
        Next::WaitUntil(until) => Some(until),
        // Only with a zero window: the next round at once, on the next reconcile.
        Next::SignInNow => Some(now),
    }
}

/// One round: a Microsoft Graph token and an Azure Resource Manager token for `client_id`, with `text` (a
/// password, or a certificate's PEM).
pub async fn round(
    cloud: &Cloud,
    http: &reqwest::Client,
    tenant_id: &str,
    client_id: &str,
    kind: Kind,
    text: &str,
) -> Result<(), String> {
    let material = match kind {
        Kind::Certificate => Some(
            Material::from_pem(text)
                .map_err(|e| format!("the certificate cannot be read back: {e}"))?,
        ),
        Kind::Password => None,
    };
    for scope in [&cloud.graph_scope, &cloud.resource_manager_scope] {
        match &material {
            Some(m) => {
                credential::client_certificate_signs_in(cloud, http, tenant_id, client_id, m, scope)
                    .await?
            }
            None => {
                credential::client_secret_signs_in(cloud, http, tenant_id, client_id, text, scope)
                    .await?
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    const POLICY: Policy = Policy {
        required: 3,
        window: Duration::from_secs(20),
    };

    /// Runs rounds at the given seconds with the given outcomes; what `next` says after each.
    fn run(rounds: &[(i64, bool)]) -> (Option<VerificationStatus>, Vec<Next>) {
        let mut status: Option<VerificationStatus> = None;
        let mut after = vec![];
        for (at, ok) in rounds {
            let outcome = if *ok {
                Ok(())
            } else {
                Err("AADSTS7000215".into())
            };
            status = Some(record(status.as_ref(), "k", outcome, t(*at), POLICY));
            after.push(next(status.as_ref(), "k", t(*at), POLICY));
        }
        (status, after)
    }

    #[test]
    fn a_credential_is_verified_by_enough_successes_in_a_row_spread_over_the_window() {
        assert_eq!(POLICY.spacing(), Duration::from_secs(10));
        assert_eq!(next(None, "k", t(0), POLICY), Next::SignInNow);
        let (status, after) = run(&[(0, true), (10, true), (20, true)]);
        assert_eq!(
            after,
            [
                Next::WaitUntil(t(10)),
                Next::WaitUntil(t(20)),
                Next::Verified
            ]
        );
        let v = status.unwrap();
        assert_eq!((v.successes, v.attempts, v.required), (3, 3, 3));
        assert_eq!(v.verified_time, Some(Time(t(20))));
        assert_eq!(
            progress(&v),
            "verifying credential k: 3 of 3 sign-in rounds in a row over 20s succeeded (3 tried)"
        );
    }

    #[test]
    fn a_failure_starts_the_count_again_and_a_window_not_yet_covered_is_not_enough() {
        let (status, after) = run(&[(0, true), (10, false), (20, true), (30, true), (40, true)]);
        assert_eq!(*after.last().unwrap(), Next::Verified);
        let v = status.unwrap();
        assert_eq!(v.first_success_time, Some(Time(t(20))));
        assert_eq!(v.attempts, 5);
        assert_eq!(v.last_failure, None);
        // Three quick successes do not cover the window: still verifying.
        let (status, _) = run(&[(0, true), (1, true), (2, true)]);
        assert_eq!(status.unwrap().verified_time, None);
        let (failed, _) = run(&[(0, false)]);
        let failed = failed.unwrap();
        assert_eq!(failed.last_failure.as_deref(), Some("AADSTS7000215"));
        assert!(progress(&failed).ends_with("the last round failed: AADSTS7000215"));
    }

    #[test]
    fn a_verification_passed_elsewhere_is_taken_over_only_for_its_credential() {
        let (passed, _) = run(&[(0, true), (10, true), (20, true)]);
        let passed = passed.unwrap();
        assert_eq!(adopted(None, Some(&passed), "k"), Some(passed.clone()));
        assert_eq!(
            adopted(None, Some(&passed), "other"),
            None,
            "another credential"
        );
        let (pending, _) = run(&[(0, true)]);
        assert_eq!(adopted(None, pending.as_ref(), "k"), None, "not passed yet");
        let own = record(None, "k", Ok(()), t(30), POLICY);
        assert_eq!(
            adopted(Some(&own), Some(&passed), "k"),
            None,
            "its own count stands"
        );
        let stale = record(None, "old", Ok(()), t(30), POLICY);
        assert_eq!(adopted(Some(&stale), Some(&passed), "k"), Some(passed));
    }

    #[test]
    fn another_credential_starts_afresh_and_one_round_can_be_enough() {
        let (status, _) = run(&[(0, true), (10, true), (20, true)]);
        assert_eq!(
            next(status.as_ref(), "other", t(21), POLICY),
            Next::SignInNow
        );
        let renewed = record(status.as_ref(), "other", Ok(()), t(21), POLICY);
        assert_eq!(
            (renewed.successes, renewed.attempts, renewed.verified_time),
            (1, 1, None)
        );
        let one = Policy {
            required: 1,
            window: Duration::from_secs(60),
        };
        let v = record(None, "k", Ok(()), t(0), one);
        assert_eq!(next(Some(&v), "k", t(0), one), Next::Verified);
    }
}
