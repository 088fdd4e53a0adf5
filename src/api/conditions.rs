//! Conditions as the Kubernetes API conventions and kstatus define them: `Ready` summarises, `Reconciling` and
//! `Stalled` say whether progress is still being made. Pure functions, no I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The summary condition that Argo CD, Flux and `kubectl wait --for=condition=Ready` read.
pub const READY: &str = "Ready";
/// kstatus: the controller is working towards the desired state.
pub const RECONCILING: &str = "Reconciling";
/// kstatus: the controller cannot make progress without a change from outside.
pub const STALLED: &str = "Stalled";

/// Sets `new` in `conditions`, replacing the condition of the same type. `lastTransitionTime` moves only when
/// the status changes, as the API conventions require; reason, message and observedGeneration always follow
/// `new`. Returns whether anything changed, so callers can skip a status write that would change nothing.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            let transition_time = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            let updated = Condition {
                last_transition_time: transition_time,
                ..new
            };
            if *old == updated {
                return false;
            }
            *old = updated;
            true
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// Builds a condition observed now for `generation`.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: now,
    }
}

/// Where an object stands, as kstatus reads it from Ready, Reconciling and Stalled.
pub enum Progress<'a> {
    /// Converged.
    Ready(&'a str),
    /// Not there yet, and retrying will get there (waiting for Azure, throttled, a transient failure).
    Retrying { reason: &'a str, message: &'a str },
    /// Stuck until something changes (the spec, a grant, a conflicting object).
    Stalled { reason: &'a str, message: &'a str },
}

/// Sets Ready, Reconciling and Stalled together, so that they never contradict each other.
pub fn summarize(
    conditions: &mut Vec<Condition>,
    progress: Progress,
    generation: Option<i64>,
    now: Time,
) {
    let (ready, reconciling, stalled, reason, message) = match progress {
        Progress::Ready(message) => (true, false, false, "Ready", message),
        Progress::Retrying { reason, message } => (false, true, false, reason, message),
        Progress::Stalled { reason, message } => (false, false, true, reason, message),
    };
    set_condition(
        conditions,
        condition(READY, ready, reason, message, generation, now.clone()),
    );
    set_condition(
        conditions,
        condition(
            RECONCILING,
            reconciling,
            reason,
            if reconciling { message } else { "" },
            generation,
            now.clone(),
        ),
    );
    set_condition(
        conditions,
        condition(
            STALLED,
            stalled,
            reason,
            if stalled { message } else { "" },
            generation,
            now,
        ),
    );
}

/// Records a failure: Ready False with `reason`, and Stalled or Reconciling as `stalled` says. Returns whether
/// Ready's reason changed, which is when an Event is worth publishing (not on every retry).
pub fn record_failure(
    conditions: &mut Vec<Condition>,
    reason: &str,
    message: &str,
    stalled: bool,
    generation: Option<i64>,
    now: Time,
) -> bool {
    let changed = find(conditions, READY).is_none_or(|c| c.reason != reason);
    let progress = if stalled {
        Progress::Stalled { reason, message }
    } else {
        Progress::Retrying { reason, message }
    };
    summarize(conditions, progress, generation, now);
    changed
}

/// The condition of the given type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of the given type is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failure_is_news_only_when_its_reason_changes() {
        let t = || Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap());
        let mut c = vec![];
        assert!(record_failure(
            &mut c,
            "Throttled",
            "slow down",
            false,
            Some(1),
            t()
        ));
        assert!(!record_failure(
            &mut c,
            "Throttled",
            "again",
            false,
            Some(1),
            t()
        ));
        assert!(is_true(&c, RECONCILING) && !is_true(&c, STALLED));
        assert!(record_failure(
            &mut c,
            "InvalidSpec",
            "spec.x",
            true,
            Some(2),
            t()
        ));
        assert!(is_true(&c, STALLED) && !is_true(&c, READY));
        assert_eq!(find(&c, READY).unwrap().message, "spec.x");
    }

    use super::*;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conds = vec![];
        assert!(set_condition(
            &mut conds,
            condition(
                READY,
                false,
                "Creating",
                "creating the application",
                Some(1),
                at(10)
            )
        ));

        // Same status, new reason: the reason follows, the transition time stays.
        assert!(set_condition(
            &mut conds,
            condition(
                READY,
                false,
                "WaitingForPrincipalReplication",
                "waiting",
                Some(1),
                at(20)
            )
        ));
        assert_eq!(conds[0].reason, "WaitingForPrincipalReplication");
        assert_eq!(conds[0].last_transition_time, at(10));

        // Status flips: the transition time moves.
        assert!(set_condition(
            &mut conds,
            condition(READY, true, "Ready", "ready", Some(1), at(30))
        ));
        assert_eq!(conds[0].last_transition_time, at(30));
        assert!(is_true(&conds, READY));
        assert_eq!(conds.len(), 1);
    }

    #[test]
    fn identical_condition_is_not_a_change() {
        let mut conds = vec![condition(READY, true, "Ready", "ready", Some(2), at(10))];
        assert!(!set_condition(
            &mut conds,
            condition(READY, true, "Ready", "ready", Some(2), at(99))
        ));
        assert_eq!(conds[0].last_transition_time, at(10));
        // A newer generation observed is a change, even with the same status.
        assert!(set_condition(
            &mut conds,
            condition(READY, true, "Ready", "ready", Some(3), at(99))
        ));
        assert_eq!(conds[0].observed_generation, Some(3));
    }

    #[test]
    fn summaries_never_contradict() {
        let mut conds = vec![];
        summarize(
            &mut conds,
            Progress::Retrying {
                reason: "Throttled",
                message: "429",
            },
            Some(1),
            at(1),
        );
        assert!(
            !is_true(&conds, READY) && is_true(&conds, RECONCILING) && !is_true(&conds, STALLED)
        );
        summarize(
            &mut conds,
            Progress::Stalled {
                reason: "SecretConflict",
                message: "taken",
            },
            Some(1),
            at(2),
        );
        assert!(
            !is_true(&conds, READY) && !is_true(&conds, RECONCILING) && is_true(&conds, STALLED)
        );
        assert_eq!(find(&conds, READY).unwrap().reason, "SecretConflict");
        summarize(&mut conds, Progress::Ready("ok"), Some(2), at(3));
        assert!(
            is_true(&conds, READY) && !is_true(&conds, RECONCILING) && !is_true(&conds, STALLED)
        );
        assert_eq!(conds.len(), 3);
    }

    #[test]
    fn types_are_independent() {
        let mut conds = vec![];
        set_condition(
            &mut conds,
            condition(READY, false, "Reconciling", "", None, at(1)),
        );
        set_condition(
            &mut conds,
            condition(STALLED, true, "DeniedByPolicy", "", None, at(2)),
        );
        assert!(!is_true(&conds, READY));
        assert!(is_true(&conds, STALLED));
        assert!(find(&conds, RECONCILING).is_none());
    }
}
