//! Follows one kind of object through a watch and records when each first met a condition (Ready, a rotation
//! completed), and when all of them did: cheaper for the API server than listing N objects every second, and
//! timed by the event rather than by a poll.

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use kube::{
    Api, Resource, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;

#[derive(Default)]
struct State {
    /// Objects that meet the condition now, with the moment they (last) came to meet it.
    since: HashMap<String, Instant>,
    /// When the count last reached `want`, while it stays there.
    all_at: Option<Instant>,
    synced: bool,
}

pub struct Tracker {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tracker {
    /// Watches `api`; `want` is how many objects must meet `condition` for "all".
    pub fn start<K>(
        api: Api<K>,
        want: usize,
        condition: impl Fn(&K) -> bool + Send + 'static,
    ) -> Tracker
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                let now = Instant::now();
                let mut s = shared.lock().expect("not poisoned");
                match event {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                        if condition(&o) {
                            s.since.entry(o.name_any()).or_insert(now);
                        } else {
                            s.since.remove(&o.name_any());
                        }
                    }
                    watcher::Event::Delete(o) => {
                        s.since.remove(&o.name_any());
                    }
                    watcher::Event::Init => {}
                    watcher::Event::InitDone => s.synced = true,
                }
                if s.since.len() >= want {
                    s.all_at.get_or_insert(now);
                } else {
                    s.all_at = None;
                }
            }
        });
        Tracker { state, task }
    }

    /// Waits for the watch's initial list.
    pub async fn synced(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.state.lock().expect("not poisoned").synced {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the watch did not list within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.state.lock().expect("not poisoned").since.len()
    }

    /// When all `want` objects came to meet the condition (None while some do not).
    pub fn all_at(&self) -> Option<Instant> {
        self.state.lock().expect("not poisoned").all_at
    }

    /// When each object that meets the condition came to meet it.
    pub fn times(&self) -> Vec<Instant> {
        self.state
            .lock()
            .expect("not poisoned")
            .since
            .values()
            .copied()
            .collect()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
