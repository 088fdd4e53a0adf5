//! What a CredentialWatch reports, from what was read and the time: each credential's state against
//! warnBefore, the Ready, Expiring and Expired conditions, the earliest expiry, the metric series and when to
//! look again. Pure: the time is an argument, so the tests choose it.

use std::time::Duration;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};

use crate::{
    api::{
        conditions::{self, Progress},
        credential_watch::{
            CredentialKind, CredentialState, CredentialWatchStatus, EXPIRED, EXPIRING,
            WatchedApplication, WatchedCredential,
        },
    },
    azure::graph::Application,
};

/// What gather read: the applications named by appId (None: no such application) and those the filter
/// matched, with whether the filter matched more than were read.
#[derive(Debug, Default)]
pub struct Read {
    pub by_app_id: Vec<(String, Option<Application>)>,
    pub filtered: Vec<Application>,
    pub truncated: bool,
}

/// The settings of the watch the plan needs.
pub struct Settings {
    pub warn_before: Duration,
    pub interval: Duration,
    pub generation: Option<i64>,
}

/// One credential's expiry as the gauge exports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub app_id: String,
    pub key_id: String,
    pub kind: CredentialKind,
    pub expiry_seconds: f64,
}

/// The status to write, the gauge's series for this watch (exactly these), and when to read again.
#[derive(Debug)]
pub struct Plan {
    pub status: CredentialWatchStatus,
    pub series: Vec<Series>,
    pub requeue: Duration,
}

/// How many credentials a condition's message names before it says how many more there are: a condition
/// message is bounded (32 KiB), and a list longer than this is read in status anyway.
const NAMED_IN_MESSAGE: usize = 20;

/// A credential's state at `now`: Expired at or after its end, Expiring within `warn_before` of it.
pub fn classify(end: Option<Timestamp>, now: Timestamp, warn_before: Duration) -> CredentialState {
    let Some(end) = end else {
        return CredentialState::Valid;
    };
    if end <= now {
        CredentialState::Expired
    } else if end.duration_since(now) <= signed(warn_before) {
        CredentialState::Expiring
    } else {
        CredentialState::Valid
    }
}

/// The next moment after `now` at which a credential ending at `end` changes state.
fn next_change(end: Option<Timestamp>, now: Timestamp, warn_before: Duration) -> Option<Timestamp> {
    let end = end?;
    let expiring_from = end.checked_sub(signed(warn_before)).ok();
    [expiring_from, Some(end)]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min()
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// Every watched application in appId order, each once (an application both named and filtered is listed once),
/// with its credentials in expiry order.
fn applications(read: &Read, now: Timestamp, warn_before: Duration) -> Vec<WatchedApplication> {
    let mut apps: std::collections::BTreeMap<String, WatchedApplication> = Default::default();
    let found = read.by_app_id.iter().filter_map(|(_, a)| a.as_ref());
    for app in found.chain(read.filtered.iter()) {
        let key = app.app_id.to_ascii_lowercase();
        apps.entry(key)
            .or_insert_with(|| watched(app, now, warn_before));
    }
    for (app_id, app) in &read.by_app_id {
        if app.is_none() {
            apps.entry(app_id.to_ascii_lowercase())
                .or_insert_with(|| WatchedApplication {
                    app_id: app_id.to_ascii_lowercase(),
                    display_name: None,
                    found: false,
                    credentials: vec![],
                });
        }
    }
    apps.into_values().collect()
}

fn watched(app: &Application, now: Timestamp, warn_before: Duration) -> WatchedApplication {
    let passwords = app
        .password_credentials
        .iter()
        .map(|c| (CredentialKind::Password, c));
    let certificates = app
        .key_credentials
        .iter()
        .map(|c| (CredentialKind::Certificate, c));
    let mut credentials: Vec<WatchedCredential> = passwords
        .chain(certificates)
        .map(|(kind, c)| WatchedCredential {
            key_id: c.key_id.to_ascii_lowercase(),
            kind,
            display_name: c.display_name.clone(),
            end_date_time: c.end_date_time.map(Time),
            state: classify(c.end_date_time, now, warn_before),
        })
        .collect();
    // No date sorts last: it never expires.
    credentials.sort_by_key(|c| {
        (
            c.end_date_time.as_ref().map_or(Timestamp::MAX, |t| t.0),
            c.key_id.clone(),
        )
    });
    WatchedApplication {
        app_id: app.app_id.to_ascii_lowercase(),
        display_name: Some(app.display_name.clone()),
        found: true,
        credentials,
    }
}

/// The status, series and requeue for what was read. `current` is the status as it stands, whose
/// conditions keep their transition times.
pub fn plan(
    current: Option<&CredentialWatchStatus>,
    read: &Read,
    settings: &Settings,
    now: Timestamp,
) -> Plan {
    let apps = applications(read, now, settings.warn_before);
    let all = || {
        apps.iter()
            .flat_map(|a| a.credentials.iter().map(move |c| (a, c)))
    };
    let series = all()
        .filter_map(|(a, c)| {
            Some(Series {
                app_id: a.app_id.clone(),
                key_id: c.key_id.clone(),
                kind: c.kind,
                expiry_seconds: c.end_date_time.as_ref()?.0.as_second() as f64,
            })
        })
        .collect();
    let earliest = all().filter_map(|(_, c)| c.end_date_time.clone()).min();
    let next = all()
        .filter_map(|(_, c)| {
            next_change(
                c.end_date_time.as_ref().map(|t| t.0),
                now,
                settings.warn_before,
            )
        })
        .min();
    let requeue = match next {
        // A second past the change, so that the next reconcile sees it changed.
        Some(t) => settings.interval.min(
            Duration::try_from(t.duration_since(now)).unwrap_or_default() + Duration::from_secs(1),
        ),
        None => settings.interval,
    };
    let mut conditions = current.map(|s| s.conditions.clone()).unwrap_or_default();
    let time = Time(now);
    for (type_, state, yes, no) in [
        (
            EXPIRING,
            CredentialState::Expiring,
            "CredentialsExpiring",
            "NoneExpiring",
        ),
        (
            EXPIRED,
            CredentialState::Expired,
            "CredentialsExpired",
            "NoneExpired",
        ),
    ] {
        let matching: Vec<String> = all()
            .filter(|(_, c)| c.state == state)
            .map(|(a, c)| describe(a, c))
            .collect();
        conditions::set_condition(
            &mut conditions,
            expiry_condition(type_, &matching, yes, no, settings.generation, time.clone()),
        );
    }
    let ready = ready_message(&apps, read.truncated);
    conditions::summarize(
        &mut conditions,
        Progress::Ready(&ready),
        settings.generation,
        time.clone(),
    );
    Plan {
        status: CredentialWatchStatus {
            application_count: Some(apps.iter().filter(|a| a.found).count() as i64),
            applications: apps,
            earliest_expiry: earliest,
            last_check_time: Some(time),
            observed_generation: settings.generation,
            conditions,
        },
        series,
        requeue,
    }
}

/// "app {appId} ({name}) Password {keyId} expires 2027-01-02T00:00:00Z": the ids in full, so that a message
/// can be searched for and pasted into `az ad app credential list --id`.
fn describe(app: &WatchedApplication, c: &WatchedCredential) -> String {
    let name = app
        .display_name
        .as_deref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    let verb = if c.state == CredentialState::Expired {
        "expired"
    } else {
        "expires"
    };
    let when = c
        .end_date_time
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    format!(
        "app {}{name} {} key {} {verb} {when}",
        app.app_id,
        c.kind.as_str(),
        c.key_id
    )
}

fn expiry_condition(
    type_: &str,
    matching: &[String],
    yes: &str,
    no: &str,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    if matching.is_empty() {
        return conditions::condition(type_, false, no, "", generation, now);
    }
    let mut message = matching
        .iter()
        .take(NAMED_IN_MESSAGE)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if matching.len() > NAMED_IN_MESSAGE {
        message.push_str(&format!(
            "; and {} more (see status.applications)",
            matching.len() - NAMED_IN_MESSAGE
        ));
    }
    conditions::condition(type_, true, yes, message, generation, now)
}

fn ready_message(apps: &[WatchedApplication], truncated: bool) -> String {
    let found = apps.iter().filter(|a| a.found).count();
    let credentials: usize = apps.iter().map(|a| a.credentials.len()).sum();
    let mut message = format!("watching {found} applications with {credentials} credentials");
    let missing: Vec<&str> = apps
        .iter()
        .filter(|a| !a.found)
        .map(|a| a.app_id.as_str())
        .collect();
    if !missing.is_empty() {
        message.push_str(&format!(
            "; no application has appId {}",
            missing.join(", ")
        ));
    }
    if truncated {
        message.push_str(&format!(
            "; the filter matched more than {} applications, only those are watched: narrow it",
            super::gather::MAX_FILTERED
        ));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::graph::AppCredential;

    const DAY: i64 = 86_400;
    const APP: &str = "11111111-0000-4000-8000-000000000001";

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn now() -> Timestamp {
        at(1_900_000_000)
    }

    fn credential(key: &str, end_in_days: Option<i64>) -> AppCredential {
        AppCredential {
            key_id: key.into(),
            display_name: Some(format!("{key}-name")),
            end_date_time: end_in_days.map(|d| at(now().as_second() + d * DAY)),
            ..Default::default()
        }
    }

    fn app(app_id: &str, passwords: Vec<AppCredential>, keys: Vec<AppCredential>) -> Application {
        Application {
            id: format!("obj-{app_id}"),
            app_id: app_id.into(),
            display_name: "legacy-billing".into(),
            unique_name: None,
            notes: None,
            tags: vec![],
            password_credentials: passwords,
            key_credentials: keys,
        }
    }

    fn settings() -> Settings {
        Settings {
            warn_before: Duration::from_secs(30 * DAY as u64),
            interval: Duration::from_secs(3600),
            generation: Some(3),
        }
    }

    #[test]
    fn each_credential_is_classified_against_warn_before_and_now() {
        let warn = Duration::from_secs(30 * DAY as u64);
        let n = now();
        for (end, want) in [
            (None, CredentialState::Valid),
            (Some(n.as_second() - 1), CredentialState::Expired),
            (Some(n.as_second()), CredentialState::Expired),
            (Some(n.as_second() + 1), CredentialState::Expiring),
            (Some(n.as_second() + 10 * DAY), CredentialState::Expiring),
            (Some(n.as_second() + 30 * DAY), CredentialState::Expiring),
            (Some(n.as_second() + 30 * DAY + 1), CredentialState::Valid),
            (Some(n.as_second() + 400 * DAY), CredentialState::Valid),
        ] {
            assert_eq!(classify(end.map(at), n, warn), want, "end {end:?}");
        }
    }

    #[test]
    fn conditions_name_the_application_and_key_of_each_expiring_or_expired_credential() {
        let read = Read {
            by_app_id: vec![(
                APP.into(),
                Some(app(
                    APP,
                    vec![
                        credential("aaaa-soon", Some(10)),
                        credential("bbbb-later", Some(400)),
                    ],
                    vec![credential("cccc-cert", Some(-2))],
                )),
            )],
            ..Default::default()
        };
        let plan = plan(None, &read, &settings(), now());
        let status = &plan.status;
        assert_eq!(status.application_count, Some(1));
        let creds = &status.applications[0].credentials;
        let states: Vec<_> = creds
            .iter()
            .map(|c| (c.key_id.as_str(), c.kind, c.state))
            .collect();
        assert_eq!(
            states,
            [
                (
                    "cccc-cert",
                    CredentialKind::Certificate,
                    CredentialState::Expired
                ),
                (
                    "aaaa-soon",
                    CredentialKind::Password,
                    CredentialState::Expiring
                ),
                (
                    "bbbb-later",
                    CredentialKind::Password,
                    CredentialState::Valid
                ),
            ]
        );
        let expiring = conditions::find(&status.conditions, EXPIRING).unwrap();
        assert_eq!(
            (expiring.status.as_str(), expiring.reason.as_str()),
            ("True", "CredentialsExpiring")
        );
        assert!(
            expiring.message.contains(&format!(
                "app {APP} (legacy-billing) Password key aaaa-soon expires "
            )),
            "{}",
            expiring.message
        );
        assert!(!expiring.message.contains("bbbb-later"));
        let expired = conditions::find(&status.conditions, EXPIRED).unwrap();
        assert!(
            expired.status == "True"
                && expired
                    .message
                    .contains("Certificate key cccc-cert expired "),
            "{}",
            expired.message
        );
        assert!(conditions::is_true(&status.conditions, conditions::READY));
        assert_eq!(
            status.earliest_expiry,
            Some(Time(at(now().as_second() - 2 * DAY)))
        );
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(plan.series.len(), 3);
        assert!(plan.series.contains(&Series {
            app_id: APP.into(),
            key_id: "aaaa-soon".into(),
            kind: CredentialKind::Password,
            expiry_seconds: (now().as_second() + 10 * DAY) as f64,
        }));
    }

    #[test]
    fn it_looks_again_when_the_next_credential_changes_state_if_that_is_before_the_interval() {
        let read = |days_and_secs: i64| Read {
            filtered: vec![app(
                APP,
                vec![AppCredential {
                    key_id: "k".into(),
                    end_date_time: Some(at(now().as_second() + days_and_secs)),
                    ..Default::default()
                }],
                vec![],
            )],
            ..Default::default()
        };
        // Turns Expiring in 100 s (30 days before its end): then, not in an hour.
        let p = plan(None, &read(30 * DAY + 100), &settings(), now());
        assert_eq!(p.requeue, Duration::from_secs(101));
        // Expiring now, expires in 50 s.
        let p = plan(None, &read(50), &settings(), now());
        assert_eq!(p.requeue, Duration::from_secs(51));
        // Nothing changes within the interval.
        let p = plan(None, &read(400 * DAY), &settings(), now());
        assert_eq!(p.requeue, Duration::from_secs(3600));
        // Expired already: nothing further to wait for.
        let p = plan(None, &read(-DAY), &settings(), now());
        assert_eq!(p.requeue, Duration::from_secs(3600));
    }

    #[test]
    fn an_unknown_app_id_is_reported_without_failing_the_others() {
        let other = "22222222-0000-4000-8000-000000000002";
        let read = Read {
            by_app_id: vec![
                (
                    APP.to_uppercase(),
                    Some(app(APP, vec![credential("k", Some(400))], vec![])),
                ),
                (other.into(), None),
            ],
            // Also matched by the filter: listed once.
            filtered: vec![app(APP, vec![credential("k", Some(400))], vec![])],
            truncated: false,
        };
        let p = plan(None, &read, &settings(), now());
        let apps = &p.status.applications;
        assert_eq!(apps.len(), 2);
        assert_eq!((apps[0].app_id.as_str(), apps[0].found), (APP, true));
        assert_eq!((apps[1].app_id.as_str(), apps[1].found), (other, false));
        assert_eq!(p.status.application_count, Some(1));
        let ready = conditions::find(&p.status.conditions, conditions::READY).unwrap();
        assert!(
            ready.status == "True" && ready.message.contains(other),
            "{}",
            ready.message
        );
        let expiring = conditions::find(&p.status.conditions, EXPIRING).unwrap();
        assert_eq!(
            (expiring.status.as_str(), expiring.reason.as_str()),
            ("False", "NoneExpiring")
        );
        assert_eq!(p.series.len(), 1);
    }

    #[test]
    fn a_long_list_is_cut_in_the_message_and_transition_times_hold() {
        let many: Vec<AppCredential> = (0..25)
            .map(|i| credential(&format!("k{i:02}"), Some(5)))
            .collect();
        let read = Read {
            filtered: vec![app(APP, many, vec![])],
            truncated: true,
            ..Default::default()
        };
        let first = plan(None, &read, &settings(), now());
        let expiring = conditions::find(&first.status.conditions, EXPIRING).unwrap();
        assert!(
            expiring
                .message
                .ends_with("; and 5 more (see status.applications)"),
            "{}",
            expiring.message
        );
        let ready = conditions::find(&first.status.conditions, conditions::READY).unwrap();
        assert!(ready.message.contains("narrow it"), "{}", ready.message);
        // An hour later, nothing changed state: the conditions keep their transition times.
        let later = plan(
            Some(&first.status),
            &read,
            &settings(),
            at(now().as_second() + 3600),
        );
        let again = conditions::find(&later.status.conditions, EXPIRING).unwrap();
        assert_eq!(again.last_transition_time, Time(now()));
    }
}
