//! Events, written straight to the API server.
//!
//! Hand-written instead of kube's `Recorder`: that keeps every event it wrote for six minutes, to count
//! repeats into a series, and scans the whole cache on every publish. The operator publishes an event once
//! per change (a Warning once per change of reason), never the same one in a loop, so the cache bought
//! nothing and cost tens of MiB, and quadratic time, while thousands of objects were created at once.

use crate::controller::clock;
use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource,
    api::PostParams,
    runtime::events::{Event, EventType, Reporter},
};
use tracing::warn;

use super::Context;

#[derive(Clone)]
pub struct Events {
    client: Client,
    reporter: Reporter,
}

impl Events {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Events { client, reporter }
    }

    /// Creates one events.k8s.io/v1 Event about `regarding`, as kube's Recorder would (same fields, no series).
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let event = build(&self.reporter, ev, regarding, clock::now());
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        Api::<K8sEvent>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &event)
            .await
            .map(|_| ())
    }
}

fn build(reporter: &Reporter, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
    let controller = reporter.controller.clone();
    K8sEvent {
        action: Some(ev.action.clone()),
        reason: Some(ev.reason.clone()),
        note: ev.note.clone(),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        related: ev.secondary.clone(),
        metadata: ObjectMeta {
            namespace: regarding.namespace.clone(),
            // Unique per object and moment, as kube names them.
            name: Some(format!(
                "{}.{:x}",
                regarding.name.as_deref().unwrap_or(&controller),
                now.as_nanosecond()
            )),
            ..Default::default()
        },
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| controller.clone()),
        ),
        reporting_controller: Some(controller),
        type_: Some(
            match ev.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        ..Default::default()
    }
}

/// Records an Event on `object`. Never fails the reconcile: Events are for people, the state is in status.
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_what_kubectl_shows_and_unique_names() {
        let reporter = Reporter {
            controller: "entra-operator".into(),
            instance: Some("pod-1".into()),
        };
        let regarding = ObjectReference {
            kind: Some("ServicePrincipal".into()),
            name: Some("web".into()),
            namespace: Some("team-a".into()),
            ..Default::default()
        };
        let ev = Event {
            type_: EventType::Warning,
            reason: "Throttled".into(),
            note: Some("Azure said wait".into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let now = clock::now();
        let e = build(&reporter, &ev, &regarding, now);
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("Throttled"));
        assert_eq!(e.note.as_deref(), Some("Azure said wait"));
        assert_eq!(e.reporting_controller.as_deref(), Some("entra-operator"));
        assert_eq!(e.reporting_instance.as_deref(), Some("pod-1"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(e.regarding.unwrap().name.as_deref(), Some("web"));
        let later = build(
            &reporter,
            &ev,
            &regarding,
            now + k8s_openapi::jiff::SignedDuration::from_nanos(1),
        );
        assert_ne!(e.metadata.name, later.metadata.name);
    }
}
