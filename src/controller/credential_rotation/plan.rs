//! The rotation schedule, without I/O: whether a rotation is due and why, when the next one is, when the
//! previous secret may go, and how close the current one is to expiring.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Why a rotation happens now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// No credential the rotation knows of yet.
    Initial,
    /// spec.rotationToken changed.
    Manual,
    /// rotateEvery has passed since the last rotation.
    Scheduled,
    /// The current secret expires within renewBefore.
    Expiring,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Initial => "initial",
            Trigger::Manual => "manual",
            Trigger::Scheduled => "scheduled",
            Trigger::Expiring => "expiring",
        }
    }
}

/// The schedule from the spec.
#[derive(Clone, Copy, Debug, Default)]
pub struct Schedule {
    pub rotate_every: Option<Duration>,
    pub renew_before: Option<Duration>,
}

/// The current credential as far as the schedule cares.
#[derive(Clone, Copy, Debug)]
pub struct Current {
    /// When it was issued (the last rotation).
    pub issued: Timestamp,
    pub expires: Option<Timestamp>,
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

/// When the current credential is due: rotateEvery after it was issued, or renewBefore its expiry, whichever
/// comes first.
pub fn next_rotation(schedule: Schedule, current: Current) -> Option<Timestamp> {
    let by_age = schedule.rotate_every.map(|d| add(current.issued, d));
    let by_expiry = match (schedule.renew_before, current.expires) {
        (Some(d), Some(expires)) => Some(sub(expires, d)),
        _ => None,
    };
    match (by_age, by_expiry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether to rotate now, and why. `token_changed` when spec.rotationToken differs from the one last acted on.
pub fn due(
    now: Timestamp,
    schedule: Schedule,
    current: Option<Current>,
    token_changed: bool,
) -> Option<Trigger> {
    let Some(current) = current else {
        return Some(Trigger::Initial);
    };
    if token_changed {
        return Some(Trigger::Manual);
    }
    if current.expires.is_some_and(|e| e <= now) {
        return Some(Trigger::Expiring);
    }
    let next = next_rotation(schedule, current)?;
    if next > now {
        return None;
    }
    let by_age = schedule
        .rotate_every
        .is_some_and(|d| add(current.issued, d) <= now);
    Some(if by_age {
        Trigger::Scheduled
    } else {
        Trigger::Expiring
    })
}

/// How the current credential stands against its expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Fine,
    /// Within renewBefore of expiring (or, without renewBefore, within a tenth of its lifetime).
    Soon,
    Expired,
}

pub fn expiry(now: Timestamp, current: Current, renew_before: Option<Duration>) -> Expiry {
    let Some(expires) = current.expires else {
        return Expiry::Fine;
    };
    if expires <= now {
        return Expiry::Expired;
    }
    let warn = renew_before.unwrap_or_else(|| {
        let lifetime = expires.duration_since(current.issued);
        Duration::try_from(lifetime / 10).unwrap_or_default()
    });
    if sub(expires, warn) <= now {
        Expiry::Soon
    } else {
        Expiry::Fine
    }
}

/// How long until the next thing the rotation has to do (a rotation, or removing the previous secret), so that
/// the controller wakes exactly then rather than polling. At least a second (also when `resync` is shorter:
/// never a busy loop); at most `resync`.
pub fn wake_in(now: Timestamp, moments: &[Option<Timestamp>], resync: Duration) -> Duration {
    // Not `clamp`, which panics when its bounds cross: a resync under a second is a valid flag value.
    moments
        .iter()
        .flatten()
        .map(|t| Duration::try_from(t.duration_since(now)).unwrap_or_default())
        .min()
        .unwrap_or(resync)
        .min(resync)
        .max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }
    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_earlier_of_age_and_expiry_decides() {
        let both = Schedule {
            rotate_every: Some(secs(100)),
            renew_before: Some(secs(30)),
        };
        let current = Current {
            issued: t(0),
            expires: Some(t(120)),
        };
        assert_eq!(next_rotation(both, current), Some(t(90)));
        let age_only = Schedule {
            rotate_every: Some(secs(100)),
            renew_before: None,
        };
        assert_eq!(next_rotation(age_only, current), Some(t(100)));
        assert_eq!(due(t(89), both, Some(current), false), None);
        assert_eq!(
            due(t(90), both, Some(current), false),
            Some(Trigger::Expiring)
        );
        assert_eq!(
            due(t(100), age_only, Some(current), false),
            Some(Trigger::Scheduled)
        );
    }

    #[test]
    fn first_manual_and_expired_rotations() {
        let s = Schedule {
            rotate_every: Some(secs(100)),
            renew_before: None,
        };
        assert_eq!(due(t(0), s, None, false), Some(Trigger::Initial));
        let current = Current {
            issued: t(0),
            expires: Some(t(50)),
        };
        assert_eq!(due(t(10), s, Some(current), true), Some(Trigger::Manual));
        assert_eq!(
            due(t(60), s, Some(current), false),
            Some(Trigger::Expiring),
            "an expired secret is renewed whatever the schedule says"
        );
    }

    #[test]
    fn expiry_warns_within_renew_before_or_the_last_tenth() {
        let current = Current {
            issued: t(0),
            expires: Some(t(100)),
        };
        assert_eq!(expiry(t(50), current, Some(secs(30))), Expiry::Fine);
        assert_eq!(expiry(t(75), current, Some(secs(30))), Expiry::Soon);
        assert_eq!(expiry(t(89), current, None), Expiry::Fine);
        assert_eq!(expiry(t(91), current, None), Expiry::Soon);
        assert_eq!(expiry(t(100), current, None), Expiry::Expired);
    }

    #[test]
    fn wakes_at_the_nearest_moment_within_bounds() {
        let hour = secs(3600);
        assert_eq!(
            wake_in(t(0), &[Some(t(30)), Some(t(10)), None], hour),
            secs(10)
        );
        assert_eq!(
            wake_in(t(0), &[Some(t(-5))], hour),
            secs(1),
            "overdue: soon"
        );
        assert_eq!(wake_in(t(0), &[None], hour), hour);
        assert_eq!(wake_in(t(0), &[Some(t(7200))], hour), hour);
    }

    // Timestamps anywhere in jiff's range and durations anywhere in std's, whatever admission allows: the
    // schedule is computed without panicking, and wakes stay within their bounds.
    fn timestamp() -> impl proptest::strategy::Strategy<Value = Timestamp> {
        (Timestamp::MIN.as_second()..=Timestamp::MAX.as_second())
            .prop_map(|s| Timestamp::from_second(s).unwrap())
    }

    fn duration() -> impl proptest::strategy::Strategy<Value = Duration> {
        proptest::prop_oneof![
            (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            (0u64..=10 * 365 * 86_400).prop_map(Duration::from_secs),
            (0u64..2_000).prop_map(Duration::from_millis),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn the_schedule_never_panics(
            now in timestamp(),
            issued in timestamp(),
            expires in proptest::option::of(timestamp()),
            rotate_every in proptest::option::of(duration()),
            renew_before in proptest::option::of(duration()),
            token_changed in any::<bool>(),
            resync in duration(),
            moments in proptest::collection::vec(proptest::option::of(timestamp()), 0..4),
        ) {
            let schedule = Schedule { rotate_every, renew_before };
            let current = Current { issued, expires };
            let _ = next_rotation(schedule, current);
            let _ = due(now, schedule, Some(current), token_changed);
            let _ = expiry(now, current, renew_before);
            let wake = wake_in(now, &moments, resync);
            prop_assert!(wake >= secs(1), "{wake:?}");
            prop_assert!(wake <= resync.max(secs(1)), "{wake:?}");
        }
    }

    #[test]
    fn a_resync_under_a_second_still_wakes_after_a_second() {
        assert_eq!(wake_in(t(0), &[Some(t(30))], Duration::ZERO), secs(1));
        assert_eq!(wake_in(t(0), &[None], Duration::from_millis(500)), secs(1));
    }
}
