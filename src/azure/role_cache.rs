//! Role definitions by name, cached: every delegation of "AcrPull" would otherwise list role definitions again.
//! Built-in roles are the same at every scope and change rarely, so they are kept for an hour under their name
//! alone; other roles depend on the scope (custom roles are assignable only at some) and are kept briefly.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{
    arm::{ArmClient, RoleDefinition},
    error::AzureError,
};

const BUILT_IN_TTL: Duration = Duration::from_secs(3600);
const SCOPED_TTL: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct RoleCache {
    entries: Mutex<HashMap<String, (RoleDefinition, Instant)>>,
}

impl RoleCache {
    pub async fn by_name(
        &self,
        arm: &ArmClient,
        scope: &str,
        name: &str,
    ) -> Result<Option<RoleDefinition>, AzureError> {
        let global = format!("|{}", name.to_lowercase());
        let scoped = format!("{}|{}", scope.to_ascii_lowercase(), name.to_lowercase());
        if let Some(hit) = self
            .get(&global, BUILT_IN_TTL)
            .or_else(|| self.get(&scoped, SCOPED_TTL))
        {
            return Ok(Some(hit));
        }
        let found = arm.role_definition_by_name(scope, name).await?;
        if let Some(d) = &found {
            let key = if d.properties.role_type.eq_ignore_ascii_case("BuiltInRole") {
                global
            } else {
                scoped
            };
            self.entries
                .lock()
                .expect("not poisoned")
                .insert(key, (d.clone(), Instant::now()));
        }
        Ok(found)
    }

    fn get(&self, key: &str, ttl: Duration) -> Option<RoleDefinition> {
        let entries = self.entries.lock().expect("not poisoned");
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(d, _)| d.clone())
    }
}
