//! Credential replication: a client secret or certificate added through Graph is not accepted by every
//! token-endpoint region at once, so for a while one sign-in may succeed and the next fail with Entra's
//! unknown-credential error.
//!
//! What is known is only the symptom; Microsoft documents neither the mechanism nor a bound:
//! - hashicorp/vault#27593: a new secret "is not immediately ready to be used", "on good days it may take 2
//!   minutes ... on bad days it can be up to 10m", and a sliding window of successful sign-ins "still
//!   sometimes gives us false positives", i.e. a success is no proof that the next request succeeds;
//! - hashicorp/vault-plugin-secrets-azure#187: "It takes a while for the credentials to be usable in
//!   Azure", worked around by retrying sign-ins for up to 2 minutes;
//! - hashicorp/terraform-provider-vault#2079: credentials validated once still fail intermittently with
//!   401 AADSTS7000215 "Invalid client secret provided";
//! - microsoftgraph/microsoft-graph-docs#17966: a password "does not work right away, despite the cred being
//!   visible on the application", 4 to 18 seconds observed, no SLA given;
//! - external-secrets/external-secrets#3114: "Azure does not provide any API to show secret propagation
//!   status".
//!
//! All of these are about client secrets; no source was found for certificates, which the emulator delays
//! the same way (the same directory replicates both). The regions, and a per-region delay within the window,
//! are the emulator's model of those symptoms, not a documented design.
//!
//! The model: region r sees a credential `delay(keyId, r)` after its creation, a deterministic value in
//! [0, credentialMs]; region 0 is always the last (its delay is credentialMs), so the whole window is exactly
//! credentialMs and at least one region is late until then. Each token request is served by one region drawn
//! from the emulator's seeded random numbers. A credential that a region has not seen is, for that request,
//! not there at all, so the answer is exactly Entra's answer for an unknown secret or certificate.

use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

use crate::{config::Replication, server::Ctx, state::Application};

/// How many regions answer token requests under these knobs (0 and 1 both mean one).
pub fn regions(knobs: &Replication) -> u32 {
    knobs.credential_regions.max(1)
}

/// How long after its creation region `region` sees the credential `key_id`, in milliseconds: region 0 after
/// the whole window, the others after a value in [0, window] derived from a hash of the key id and region
/// (so a test can compute it from the keyId Graph returned).
pub fn delay_ms(key_id: &str, region: u32, window_ms: u64) -> u64 {
    if region == 0 || window_ms == 0 {
        return window_ms;
    }
    let digest = Sha256::digest(format!("{}|{region}", key_id.to_ascii_lowercase()).as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes) % (window_ms + 1)
}

/// Whether region `region` has seen a credential created at `created` (None: seeded or loaded, long since
/// replicated everywhere) by `now`.
pub fn visible(
    created: Option<Timestamp>,
    key_id: &str,
    region: u32,
    knobs: &Replication,
    now: Timestamp,
) -> bool {
    let Some(created) = created else {
        return true;
    };
    if knobs.credential_ms == 0 {
        return true;
    }
    let delay = delay_ms(key_id, region, knobs.credential_ms);
    now >= created + SignedDuration::from_millis(delay as i64)
}

/// The application as the region serving this token request sees it: without the client secrets and
/// certificates that have not reached that region yet. A region is drawn only when some credential is still
/// replicating, so that the knob left at 0 (or old credentials only) leaves the random sequence of fault
/// injection as it was.
pub fn as_seen_by_a_region(ctx: &Ctx, app: &mut Application) {
    let knobs = ctx.knobs.read().replication.clone();
    if knobs.credential_ms == 0 {
        return;
    }
    let now = Timestamp::now();
    let window = SignedDuration::from_millis(knobs.credential_ms as i64);
    let replicating = |created: Option<Timestamp>| created.is_some_and(|c| now < c + window);
    let any = app
        .password_credentials
        .iter()
        .map(|p| p.replicating_since)
        .chain(app.key_credentials.iter().map(|k| k.replicating_since))
        .any(replicating);
    if !any {
        return;
    }
    let region = ctx.faults.lock().region(regions(&knobs));
    app.password_credentials
        .retain(|p| visible(p.replicating_since, &p.key_id, region, &knobs, now));
    app.key_credentials
        .retain(|k| visible(k.replicating_since, &k.key_id, region, &knobs, now));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(ms: u64, regions: u32) -> Replication {
        Replication {
            credential_ms: ms,
            credential_regions: regions,
            ..Default::default()
        }
    }

    #[test]
    fn region_zero_is_the_last_and_the_others_fall_within_the_window() {
        for i in 0..50 {
            let key = format!("00000000-0000-4000-8000-{i:012}");
            assert_eq!(delay_ms(&key, 0, 1500), 1500);
            for r in 1..8 {
                let d = delay_ms(&key, r, 1500);
                assert!(d <= 1500, "{key} {r} {d}");
                assert_eq!(d, delay_ms(&key.to_ascii_uppercase(), r, 1500));
            }
        }
        // Not one value for every region: the hash spreads them.
        let spread: std::collections::BTreeSet<u64> =
            (1..8).map(|r| delay_ms("some-key", r, 1500)).collect();
        assert!(spread.len() > 1);
    }

    #[test]
    fn a_credential_is_visible_after_its_regions_delay_and_always_when_seeded_or_off() {
        let created = Timestamp::from_second(1_000_000).unwrap();
        let k = knobs(1500, 4);
        let at = |ms: i64| created + SignedDuration::from_millis(ms);
        assert!(!visible(Some(created), "k", 0, &k, at(1499)));
        assert!(visible(Some(created), "k", 0, &k, at(1500)));
        let d = delay_ms("k", 2, 1500) as i64;
        assert!(visible(Some(created), "k", 2, &k, at(d)));
        if d > 0 {
            assert!(!visible(Some(created), "k", 2, &k, at(d - 1)));
        }
        assert!(visible(None, "k", 0, &k, created));
        assert!(visible(Some(created), "k", 0, &knobs(0, 4), created));
    }

    #[test]
    fn zero_or_one_region_is_one_region() {
        assert_eq!(regions(&knobs(1, 0)), 1);
        assert_eq!(regions(&knobs(1, 1)), 1);
        assert_eq!(regions(&Replication::default()), 4);
    }
}
