//! Misses a delete waits out before it believes them: right after a create, Graph's reads can miss the new
//! object for a few seconds (replication), so "not found" holds only once it has held for a while. Kept in
//! memory, since a restart only makes the wait start again.

use std::time::Duration;

/// Since when each object being deleted (by uid) has not found what it deletes.
#[derive(Default)]
pub struct Absences(std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>);

impl Absences {
    /// Records a miss; whether misses have held for `grace` since the first.
    pub fn held_for(&self, uid: &str, grace: Duration) -> bool {
        let mut seen = self.0.lock().expect("absences lock");
        let now = tokio::time::Instant::now();
        // Misses older than an hour are from deletes long finished.
        seen.retain(|_, first| now.duration_since(*first) < Duration::from_secs(3600));
        let first = *seen.entry(uid.to_string()).or_insert(now);
        now.duration_since(first) >= grace
    }
}
