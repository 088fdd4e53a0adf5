//! The one clock the controllers read. Plans never call it: they take the time as an argument, so that their
//! tests choose it.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

/// Now.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// Now, as Kubernetes writes times.
pub fn now_time() -> Time {
    Time(now())
}
