//! No object that admission accepts can crash the operator. Objects of the four kinds are generated from their
//! CRD schemas (every field, within its bounds and patterns, with boundary values such as huge durations) and
//! submitted to the real API server with server-side dry-run; each one it accepts is decoded into its Rust type
//! and run through the pure decisions, which must answer without panicking. Then, end to end: the object from
//! issue 13 is refused at admission naming its field, and an object stored before the bound existed is reported
//! InvalidSpec on itself while the operator goes on reconciling the others of its kind.
//!
//! The CRDs installed here are the ones generated from the Rust types (`api::crds()`), which crdgen.rs checks
//! are the committed ones.

use std::{
    collections::{BTreeMap, HashMap},
    sync::LazyLock,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::events::v1::Event,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject, PostParams},
};
use proptest::{
    prelude::Rng,
    strategy::{Strategy, ValueTree},
    string::RegexGeneratorStrategy,
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use serde_json::{Value, json};

use entra_operator::{
    api::{
        self, CredentialRotation, DelegationPolicy, RoleDelegation, SecretFormat, ServicePrincipal,
        common::{
            AKS_CLUSTER_PATTERN, ARM_SCOPE_PATTERN, DURATION_PATTERN, GUID_PATTERN, MAX_DURATION,
            OBJECT_NAME_PATTERN,
        },
    },
    azure::{Cloud, arm::Permission, scope::Scope},
    cli::AzureArgs,
    controller::{credential_rotation::plan as rotation_plan, policy, reconcile, secret_format},
};

use crate::{
    harness::{Setup, delete_and_wait, eventually, ready_of, teardown, wait_condition},
    operator_run::Operator,
    support::{TestNamespace, admin_client, apply_crds},
};

/// How many objects of each kind are generated: enough to reach every optional field and boundary many times,
/// few enough that the dry runs take seconds.
const PER_KIND: usize = 150;

/// The exact object of issue 13.
fn issue_object(name: &str) -> Value {
    json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": "CredentialRotation",
        "metadata": {"name": name},
        "spec": {"servicePrincipalRef": {"name": "app"}, "renewBefore": "720h", "overlap": "9999999999999999h"},
    })
}

/// Installs the CRDs generated from the Rust types and waits until the API server enforces them.
async fn install_generated_crds(client: &Client) {
    install(client, api::crds()).await;
}

async fn install(client: &Client, crds: Vec<CustomResourceDefinition>) {
    apply_crds(client, crds, |name| format!("the generated CRD {name}")).await;
}

fn resource(kind: &str) -> ApiResource {
    match kind {
        "ServicePrincipal" => ApiResource::erase::<ServicePrincipal>(&()),
        "RoleDelegation" => ApiResource::erase::<RoleDelegation>(&()),
        "CredentialRotation" => ApiResource::erase::<CredentialRotation>(&()),
        "DelegationPolicy" => ApiResource::erase::<DelegationPolicy>(&()),
        _ => unreachable!("{kind}"),
    }
}

fn dynamic_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    match kind {
        "DelegationPolicy" => Api::all_with(client.clone(), &resource(kind)),
        _ => Api::namespaced_with(client.clone(), ns, &resource(kind)),
    }
}

/// A seeded source of random values, and generators for the strings the schemas constrain.
struct Gen {
    runner: TestRunner,
    /// Regex strategies by pattern: building one is costly.
    strategies: HashMap<String, RegexGeneratorStrategy<String>>,
}

impl Gen {
    fn new(seed: u8) -> Gen {
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]);
        Gen {
            runner: TestRunner::new_with_rng(Config::default(), rng),
            strategies: HashMap::new(),
        }
    }

    fn below(&mut self, n: usize) -> usize {
        (self.runner.rng().next_u64() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    /// A string the regex matches, drawn by proptest's regex strategy (which does not take anchors: the
    /// schema's patterns are anchored at both ends anyway).
    fn matching(&mut self, pattern: &str) -> String {
        let (flags, core) = match pattern.strip_prefix("(?i)") {
            Some(rest) => ("(?i)", rest),
            None => ("", pattern),
        };
        let core = core.strip_prefix('^').unwrap_or(core);
        let core = core.strip_suffix('$').unwrap_or(core);
        let strategy = self
            .strategies
            .entry(pattern.to_string())
            .or_insert_with(|| {
                proptest::string::string_regex(&format!("{flags}{core}"))
                    .unwrap_or_else(|e| panic!("no generator for the pattern {pattern}: {e}"))
            });
        strategy.new_tree(&mut self.runner).unwrap().current()
    }

    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b"0123456789abcdefABCDEF"[self.below(22)]))
            .collect()
    }

    fn guid(&mut self) -> String {
        format!(
            "{}-{}-{}-{}-{}",
            self.hex(8),
            self.hex(4),
            self.hex(4),
            self.hex(4),
            self.hex(12)
        )
    }

    /// Durations as people write them, the bounds themselves, values just past them and far past what any
    /// parser can hold, and anything else the pattern admits.
    fn duration(&mut self) -> String {
        match self.below(20) {
            0..=12 => self.pick(&[
                "1s", "45s", "90m", "1h", "1h30m", "720h", "8760h", "1.5h", "2s", "17520h",
                "3m0.5s",
            ]),
            13..=14 => self.pick(&["0s", "500ms", "10ns", "100us", "1µs", "0.000000001s"]),
            15..=18 => self.pick(&[
                "87600h",
                "87599h59m59.999999999s",
                "87600h1ns",
                "87601h",
                "2562047h",
                "2562048h",
                "9999999999999999h",
                "99999999999999999999999999999ns",
                "1.99999999999999999999h",
                "5256000m",
                "315360000s",
                "315360000000000000ns",
                "43800h43800h",
            ]),
            // The pattern's grammar with numbers of every size that fits the 32 characters.
            _ => return self.matching("([0-9]{1,9}([.][0-9]{1,9})?(ns|us|µs|ms|s|m|h)){1,3}"),
        }
        .to_string()
    }

    fn scope(&mut self) -> String {
        let sub = format!("/subscriptions/{}", self.guid());
        match self.below(8) {
            0 => sub,
            1 => format!("{sub}/resourceGroups/rg-{}", self.below(3)),
            2 => format!(
                "{sub}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv{}",
                self.below(3)
            ),
            3 => format!(
                "{sub}/resourcegroups/NET/providers/microsoft.network/virtualNetworks/v/subnets/s{}",
                self.below(3)
            ),
            4 => "/providers/Microsoft.Management/managementGroups/platform".to_string(),
            5 => format!("{sub}/resourceGroups/{}", "r".repeat(90)),
            _ => self.matching(ARM_SCOPE_PATTERN),
        }
    }

    fn aks_cluster(&mut self) -> String {
        match self.below(3) {
            0 => self.matching(AKS_CLUSTER_PATTERN),
            _ => format!(
                "/subscriptions/{}/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/c{}",
                self.guid(),
                self.below(5)
            ),
        }
    }

    fn object_name(&mut self) -> String {
        match self.below(6) {
            0 => "a".repeat(253),
            1 => format!("{}.{}", "a".repeat(126), "b".repeat(126)),
            2 => self.matching(OBJECT_NAME_PATTERN),
            _ => self.pick(&["app", "web-1", "a", "x.y.z", "0"]).to_string(),
        }
    }

    /// A string for `pattern`: its own generator where one knows the values that matter, else any match.
    fn for_pattern(&mut self, pattern: &str) -> String {
        match pattern {
            DURATION_PATTERN => self.duration(),
            GUID_PATTERN => self.guid(),
            ARM_SCOPE_PATTERN => self.scope(),
            AKS_CLUSTER_PATTERN => self.aks_cluster(),
            OBJECT_NAME_PATTERN => self.object_name(),
            _ => self.matching(pattern),
        }
    }

    /// Free text within the length bounds: words, role actions, placeholders, other scripts, and the longest.
    fn text(&mut self, min: usize, max: usize) -> String {
        let s = match self.below(10) {
            0 => "x".repeat(max.min(8192)),
            1 => "é中🙂\u{0}\"'\\".to_string(),
            2 => self
                .pick(&[
                    "{{ clientId }}",
                    "{{ clientSecret }}:{{ tenantId }}",
                    "{{ nope }}",
                    "{{ open",
                ])
                .into(),
            3 => self
                .pick(&[
                    "*",
                    "Microsoft.Compute/disks/read",
                    "Microsoft.Authorization/roleAssignments/write",
                    "Microsoft.KeyVault/vaults/secrets/getSecret/action",
                    "Microsoft.Authorization/*",
                ])
                .into(),
            4 => self
                .pick(&[
                    "AcrPull",
                    "Owner",
                    "Contributor",
                    "Reader",
                    "User Access Administrator",
                ])
                .into(),
            5 => self.scope(),
            6 => self.guid(),
            _ => self.matching("[ -~]{1,40}"),
        };
        let mut s: String = s.chars().take(max).collect();
        while s.chars().count() < min {
            s.push('x');
        }
        s
    }

    /// A value for `schema` (optional properties are left out by `object`).
    fn value(&mut self, schema: &Value, depth: usize) -> Value {
        // A nullable field may be sent as null: admission accepts it, and it decodes as absent.
        if schema["nullable"] == true && self.chance(5) {
            return Value::Null;
        }
        if let Some(options) = schema["enum"].as_array() {
            return self.pick(options);
        }
        let rules = rule_patterns(schema);
        match schema["type"].as_str() {
            Some("object") => self.object(schema, &rules, depth),
            Some("array") => self.array(schema, &rules, depth),
            Some("string") => Value::String(self.string(schema, &rules)),
            Some("integer") => {
                let min = schema["minimum"].as_i64().unwrap_or(0);
                let max = schema["maximum"].as_i64().unwrap_or(i64::MAX);
                json!(self.pick(&[min, max, min.saturating_add(1), 0i64.clamp(min, max)]))
            }
            Some("boolean") => json!(self.chance(50)),
            _ if schema["x-kubernetes-preserve-unknown-fields"] == true => json!({}),
            other => panic!("no generator for schema type {other:?}: {schema}"),
        }
    }

    fn string(&mut self, schema: &Value, rules: &RulePatterns) -> String {
        let rule_pattern = rules.own.as_deref();
        let max = schema["maxLength"].as_u64().unwrap_or(64) as usize;
        let min = schema["minLength"].as_u64().unwrap_or(0) as usize;
        if let Some(pattern) = schema["pattern"].as_str().or(rule_pattern) {
            // Unbounded repetitions can run past maxLength; a few tries find one within it (the last try
            // stands, and admission refuses it if it is too long).
            let mut s = self.for_pattern(pattern);
            for _ in 0..20 {
                if s.chars().count() <= max {
                    break;
                }
                s = self.for_pattern(pattern);
            }
            return s;
        }
        if rules.url {
            return self
                .pick(&[
                    "https://issuer.example",
                    "https://oidc.prod-aks.azure.com/72f988bf-0000-4000-8000-000000000001/",
                    "https://token.actions.githubusercontent.com",
                    "http://plain.example",
                ])
                .into();
        }
        if schema["format"] == "date-time" {
            return "2030-01-01T00:00:00Z".into();
        }
        self.text(min, max)
    }

    fn object(&mut self, schema: &Value, rules: &RulePatterns, depth: usize) -> Value {
        let mut out = serde_json::Map::new();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(properties) = schema["properties"].as_object() {
            // Of fields that the object's rules make exclusive, one (mostly): else nearly every object would be
            // refused for that alone.
            let groups = field_groups(schema);
            let chosen: Vec<String> = groups.exclusive.iter().map(|g| self.pick(g)).collect();
            let forced: Vec<String> = groups.at_least_one.iter().map(|g| self.pick(g)).collect();
            let together: Vec<bool> = groups.together.iter().map(|_| self.chance(50)).collect();
            for (name, sub) in properties {
                let in_exclusive = groups.exclusive.iter().any(|g| g.contains(name));
                let in_together = groups.together.iter().position(|g| g.contains(name));
                // Optional fields more often than not; deeper down less often, so that objects stay plausible.
                let present = if in_exclusive && !self.chance(5) {
                    chosen.contains(name)
                } else if let Some(i) = in_together.filter(|_| !self.chance(5)) {
                    together[i]
                } else {
                    required.contains(&name.as_str())
                        || (forced.contains(name) && !self.chance(5))
                        || self.chance(if depth > 2 { 30 } else { 60 })
                };
                if present {
                    out.insert(name.clone(), self.value(sub, depth + 1));
                }
            }
        } else if schema["additionalProperties"].is_object() {
            let max = schema["maxProperties"].as_u64().unwrap_or(4) as usize;
            let n = if self.chance(10) {
                max
            } else {
                self.below(max.min(4) + 1)
            };
            for _ in 0..n {
                let key = match &rules.item {
                    Some(p) => self.for_pattern(p),
                    None => self.matching("[a-zA-Z][-._a-zA-Z0-9]{0,20}"),
                };
                let value = self.value(&schema["additionalProperties"], depth + 1);
                out.insert(key, value);
            }
        }
        self.follow_conditions(schema, &mut out, depth);
        self.order_durations(schema, &mut out);
        Value::Object(out)
    }

    /// Sets or leaves out the fields that the object's rules tie to another field's value
    /// (`self.f == 'v' ? has(self.t) ... : !has(self.t)`), most of the time.
    fn follow_conditions(
        &mut self,
        schema: &Value,
        out: &mut serde_json::Map<String, Value>,
        depth: usize,
    ) {
        static WHEN: LazyLock<regex::Regex> = LazyLock::new(|| {
            regex::Regex::new(
                r"^self\.(\w+) == '([^']*)' \? has\(self\.(\w+)\).* : !has\(self\.(\w+)\)$",
            )
            .unwrap()
        });
        for rule in schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let text = rule["rule"].as_str().unwrap_or_default().trim();
            let Some(c) = WHEN.captures(text) else {
                continue;
            };
            if c[3] != c[4] || self.chance(10) {
                continue;
            }
            let (field, value, tied) = (&c[1], &c[2], c[3].to_string());
            // The field's default counts when it is left out.
            let actual = out
                .get(field)
                .cloned()
                .unwrap_or_else(|| schema["properties"][field]["default"].clone());
            if actual == value {
                if !out.contains_key(&tied) {
                    let generated = self.value(&schema["properties"][&tied], depth + 1);
                    out.insert(tied, generated);
                }
            } else {
                out.remove(&tied);
            }
        }
    }

    /// Orders the durations that the object's rules compare (`duration(self.a) < duration(self.b)`), most of
    /// the time: in a random order such chains fail nearly always, and what is under test is what passes them.
    fn order_durations(&mut self, schema: &Value, out: &mut serde_json::Map<String, Value>) {
        if self.chance(15) {
            return;
        }
        static LESS: LazyLock<regex::Regex> = LazyLock::new(|| {
            regex::Regex::new(r"duration\(self\.(\w+)\) < duration\(self\.(\w+)\)").unwrap()
        });
        let less = &*LESS;
        let pairs: Vec<(String, String)> = schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["rule"].as_str())
            .flat_map(|text| less.captures_iter(text))
            .map(|c| (c[1].to_string(), c[2].to_string()))
            .collect();
        let parse = |out: &serde_json::Map<String, Value>, k: &str| {
            out.get(k)
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<api::Duration>().ok())
                .map(|d| d.as_std())
        };
        // Bubble sort over the rules' pairs: a chain of n comparisons settles within n passes.
        for _ in 0..=pairs.len() {
            for (a, b) in &pairs {
                if let (Some(x), Some(y)) = (parse(out, a), parse(out, b))
                    && x >= y
                {
                    let (va, vb) = (out[a].clone(), out[b].clone());
                    out.insert(a.clone(), vb);
                    out.insert(b.clone(), va);
                }
            }
        }
    }

    fn array(&mut self, schema: &Value, rules: &RulePatterns, depth: usize) -> Value {
        let max = schema["maxItems"].as_u64().unwrap_or(5) as usize;
        let min = schema["minItems"].as_u64().unwrap_or(0) as usize;
        let n = if self.chance(5) {
            max
        } else {
            min + self.below(max.min(4).saturating_sub(min) + 1)
        };
        let items = &schema["items"];
        let mut out: Vec<Value> = vec![];
        for _ in 0..n {
            let item = match (&rules.item, items["type"].as_str()) {
                (Some(p), Some("string")) => Value::String(self.for_pattern(p)),
                _ => self.value(items, depth + 1),
            };
            // A set holds each value once, a map each key once: duplicates are not what is being tested.
            let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                .as_array()
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let duplicate = out.iter().any(|o| {
                if keys.is_empty() {
                    *o == item
                } else {
                    keys.iter().all(|k| o[k] == item[k])
                }
            });
            if !duplicate {
                out.push(item);
            }
        }
        Value::Array(out)
    }
}

/// The patterns a field's CEL rules require: `self.matches('P')` for the field itself, `x.matches('P')` inside
/// `self.all(x, ...)` for the items of a list or the keys of a map. Negated matches are constraints to avoid,
/// not patterns to generate from.
#[derive(Default)]
struct RulePatterns {
    own: Option<String>,
    item: Option<String>,
    /// The rules want a URL (`isURL(self)`).
    url: bool,
}

fn rule_patterns(schema: &Value) -> RulePatterns {
    static MATCHES: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"(!?)\b([a-z]+)\.matches\('([^']*)'\)").unwrap());
    let re = &*MATCHES;
    let mut found = RulePatterns::default();
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let text = rule["rule"].as_str().unwrap_or_default();
        found.url |= text.contains("isURL(self)");
        for c in re.captures_iter(text) {
            if &c[1] == "!" {
                continue;
            }
            if &c[2] == "self" {
                found.own = Some(c[3].to_string());
            } else {
                found.item = Some(c[3].to_string());
            }
        }
    }
    found
}

/// Fields that an object's rules tie together.
#[derive(Default)]
struct FieldGroups {
    /// Exactly one of: `has(self.a) != has(self.b)`, `[has(self.a), ...].filter(x, x).size() == 1`.
    exclusive: Vec<Vec<String>>,
    /// At least one of: `has(self.a) || has(self.b)`.
    at_least_one: Vec<Vec<String>>,
    /// Both or neither: `has(self.a) == has(self.b)`.
    together: Vec<Vec<String>>,
}

fn field_groups(schema: &Value) -> FieldGroups {
    static PAIR: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"^has\(self\.(\w+)\) (!=|==|\|\|) has\(self\.(\w+)\)$").unwrap()
    });
    static LIST: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"^\[(.*)\]\.filter\(\w+, \w+\)\.size\(\) == 1$").unwrap()
    });
    static FIELD: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"has\(self\.(\w+)\)").unwrap());
    let (pair, list, field) = (&*PAIR, &*LIST, &*FIELD);
    let mut groups = FieldGroups::default();
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let text = rule["rule"].as_str().unwrap_or_default().trim();
        if let Some(c) = pair.captures(text) {
            let fields = vec![c[1].to_string(), c[3].to_string()];
            match &c[2] {
                "!=" => groups.exclusive.push(fields),
                "==" => groups.together.push(fields),
                _ => groups.at_least_one.push(fields),
            }
        } else if let Some(c) = list.captures(text) {
            groups.exclusive.push(
                field
                    .captures_iter(&c[1])
                    .map(|f| f[1].to_string())
                    .collect(),
            );
        }
    }
    groups
}

fn spec_schema(kind: &str) -> Value {
    let crd = api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap();
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
    schema["openAPIV3Schema"]["properties"]["spec"].clone()
}

/// What the controllers decide from a CredentialRotation's spec alone, at moments from the epoch's edges to
/// now, as the controller computes them.
fn rotation_decisions(crot: &CredentialRotation) {
    let spec = &crot.spec;
    let schedule = rotation_plan::Schedule {
        rotate_every: spec.rotate_every.as_ref().map(|d| d.as_std()),
        renew_before: spec.renew_before.as_ref().map(|d| d.as_std()),
    };
    let lifetime = spec
        .credential_lifetime
        .as_ref()
        .map(|d| d.as_std())
        .unwrap_or(Duration::from_secs(8760 * 3600));
    for d in [
        spec.rotate_every.as_ref(),
        spec.renew_before.as_ref(),
        spec.credential_lifetime.as_ref(),
        Some(&spec.overlap),
    ]
    .into_iter()
    .flatten()
    {
        assert!(d.as_std() <= MAX_DURATION, "{d} admitted above the maximum");
    }
    let now = Timestamp::now();
    let lifetime = SignedDuration::try_from(lifetime).unwrap();
    for now in [now, Timestamp::MIN, Timestamp::MAX] {
        for issued in [
            now,
            now.checked_sub(lifetime).unwrap_or(Timestamp::MIN),
            Timestamp::MIN,
            Timestamp::MAX,
        ] {
            let current = rotation_plan::Current {
                issued,
                expires: issued.checked_add(lifetime).ok(),
            };
            let next = rotation_plan::next_rotation(schedule, current);
            let _ = rotation_plan::due(now, schedule, Some(current), false);
            let _ = rotation_plan::due(now, schedule, Some(current), true);
            let _ = rotation_plan::expiry(now, current, schedule.renew_before);
            let removal = now
                .checked_add(SignedDuration::try_from(spec.overlap.as_std()).unwrap_or_default())
                .ok();
            let _ = rotation_plan::wake_in(
                now,
                &[next, removal, current.expires],
                Duration::from_secs(3600),
            );
        }
    }
}

fn service_principal_decisions(sp: &ServicePrincipal) {
    if let Some(lifetime) = &sp.spec.credential_lifetime {
        assert!(lifetime.as_std() <= MAX_DURATION);
        // As the controller computes a password's end.
        let _ = Timestamp::now()
            .checked_add(SignedDuration::try_from(lifetime.as_std()).unwrap())
            .unwrap();
    }
    let Some(secret) = &sp.spec.secret else {
        return;
    };
    let cloud = Cloud::from_args(&AzureArgs::default()).unwrap();
    // One certificate for every case: generating an RSA key takes a while.
    static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let certificate = sp.spec.certificate.is_some();
    let path = secret.certificate_path();
    let (given, expected) = match certificate {
        false => {
            let text = "not-a-real-secret";
            (secret_format::Secret::Password(text), text)
        }
        true => {
            let pem = PEM.get_or_init(|| {
                let now = jiff::Timestamp::now();
                entra_operator::azure::certificate::Material::generate(
                    "fuzz",
                    now,
                    now + jiff::SignedDuration::from_hours(1),
                )
                .unwrap()
                .bundle()
            });
            (
                secret_format::Secret::Certificate { pem, path: &path },
                pem.as_str(),
            )
        }
    };
    let credential = secret_format::Credential {
        client_id: "7f951dda-4ed3-4680-a7ca-43fe172d538d",
        secret: given,
        tenant_id: "72f988bf-0000-4000-8000-000000000001",
        display_name: &sp.spec.display_name,
        cloud: &cloud,
    };
    match secret_format::render(secret.format, secret.templates.as_ref(), &credential) {
        Ok(data) if secret.format != SecretFormat::Template => {
            let bytes: BTreeMap<String, Vec<u8>> =
                data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
            assert_eq!(
                secret_format::extract_secret(secret.format, &bytes, certificate).as_deref(),
                Some(expected),
                "what is rendered is found again"
            );
        }
        // A template with an unknown placeholder is the spec's mistake, reported on the object.
        Ok(_) | Err(_) => {}
    }
}

/// Every keyVaults entry admission lets through is decided on without a panic. One the parser refuses allows
/// nothing: admission's `(?i)` is RE2's, which folds 'ſ' to 's' and the Kelvin sign to 'k', so an entry can
/// pass admission that is no ARM id; the vault it seems to name (read with those letters as ASCII) is denied.
fn key_vault_decisions(p: &DelegationPolicy) {
    for entry in &p.spec.key_vaults {
        let _ = policy::key_vaults::may_write(
            std::slice::from_ref(p),
            "tenant",
            &BTreeMap::new(),
            "spec.keyVaults",
            entry,
        );
        let _ = policy::key_vaults::vault_key(entry);
        if Scope::parse(entry).is_ok() {
            continue;
        }
        let ascii = entry.replace('ſ', "s").replace('\u{212A}', "k");
        let vault = if ascii.to_ascii_lowercase().contains("/providers/") {
            ascii
        } else {
            format!("{ascii}/providers/Microsoft.KeyVault/vaults/kv-fuzz")
        };
        let only_this = DelegationPolicy {
            spec: entra_operator::api::DelegationPolicySpec {
                key_vaults: vec![entry.clone()],
                // Selecting every namespace: a refusal here is the entry's, not the selector's.
                namespace_selector: Default::default(),
                ..p.spec.clone()
            },
            ..p.clone()
        };
        assert!(
            policy::key_vaults::may_write(&[only_this], "tenant", &BTreeMap::new(), "f", &vault)
                .is_err(),
            "keyVaults entry {entry:?}, which no ARM id parser reads, allowed {vault}"
        );
    }
}

fn role_decisions(rd: &RoleDelegation, policies: &[DelegationPolicy]) {
    let spec = &rd.spec;
    // A scope that admission lets through but the parser refuses (say, one with a backslash) is reported on
    // the object as InvalidSpec; nothing more is decided for it.
    let Ok(scope) = Scope::parse(&spec.scope) else {
        return;
    };
    let custom_scopes: Vec<Scope> = spec
        .role
        .custom
        .iter()
        .flat_map(|c| c.assignable_scopes.iter())
        .filter_map(|s| Scope::parse(s).ok())
        .collect();
    let role = match (&spec.role.name, &spec.role.id, &spec.role.custom) {
        (Some(name), _, _) => policy::RoleAsked::Name(name),
        (_, Some(id), _) => policy::RoleAsked::Id(id),
        (_, _, Some(custom)) => {
            let _ = policy::can_assign_roles(&[Permission {
                actions: custom.actions.clone(),
                not_actions: custom.not_actions.clone(),
                data_actions: custom.data_actions.clone(),
                not_data_actions: custom.not_data_actions.clone(),
            }]);
            policy::RoleAsked::Custom {
                role_name: &custom.role_name,
                actions: &custom.actions,
                not_actions: &custom.not_actions,
                data_actions: &custom.data_actions,
                assignable_scopes: &custom_scopes,
            }
        }
        _ => unreachable!("admission requires one of name, id and custom"),
    };
    let principal = match &spec.principal_id {
        Some(id) => policy::grants::PrincipalAsked::Id(id),
        None => policy::grants::PrincipalAsked::Own,
    };
    let labels = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_string(),
        "tenant".to_string(),
    )]);
    for some in [&policies[..0], &policies[..policies.len().min(3)], policies] {
        let _ = policy::decide(some, "tenant", &labels, &scope, role, principal, None);
    }
}

// Two workers: the dry runs are sequential, the client's connection is driven beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_admission_accepts_decodes_and_plans_without_panic() {
    let client = admin_client().await;
    install_generated_crds(&client).await;
    let ns = TestNamespace::new(&client, "admission-fuzz").await;
    // A fixed seed, so that a failure reproduces; ADMISSION_FUZZ_SEED explores others.
    let seed = std::env::var("ADMISSION_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(13);
    let mut generator = Gen::new(seed);
    let mut policies: Vec<DelegationPolicy> = vec![
        serde_json::from_value(json!({
            "apiVersion": "entra-operator.io/v1alpha1", "kind": "DelegationPolicy",
            "metadata": {"name": "everything"},
            "spec": {"namespaceSelector": {}, "scopes": ["/subscriptions/7f951dda-4ed3-4680-a7ca-43fe172d538d"],
                "roles": ["*"], "customRoles": {"allowedActions": ["*"]}},
        }))
        .unwrap(),
    ];
    let mut bound_refusals = 0;
    // Policies first: the RoleDelegations are decided against the ones admission accepted.
    for kind in [
        "DelegationPolicy",
        "ServicePrincipal",
        "CredentialRotation",
        "RoleDelegation",
    ] {
        let schema = spec_schema(kind);
        let api = dynamic_api(&client, &ns.name, kind);
        let mut accepted = 0;
        // Generated in order (the seed fixes them), submitted a few at a time, answers taken in order.
        let objects: Vec<DynamicObject> = (0..PER_KIND)
            .map(|i| {
                let spec = generator.value(&schema, 0);
                serde_json::from_value(json!({
                    "apiVersion": "entra-operator.io/v1alpha1", "kind": kind,
                    "metadata": {"name": format!("fuzz-{i}")}, "spec": spec,
                }))
                .unwrap()
            })
            .collect();
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let answers: Vec<_> = futures::stream::iter(&objects)
            .map(|o| api.create(&dry_run, o))
            .buffered(8)
            .collect()
            .await;
        for (object, answer) in objects.iter().zip(answers) {
            let spec = &object.data["spec"];
            let admitted = match answer {
                Ok(admitted) => admitted,
                Err(kube::Error::Api(status)) if status.code == 422 => {
                    if status.message.contains("must be at most 87600h") {
                        bound_refusals += 1;
                    }
                    continue;
                }
                Err(e) => panic!("{kind} {spec}: not a validation failure: {e}"),
            };
            accepted += 1;
            let admitted = serde_json::to_value(&admitted).unwrap();
            let shown = admitted["spec"].to_string();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match kind {
                "DelegationPolicy" => {
                    let p: DelegationPolicy = serde_json::from_value(admitted.clone()).unwrap();
                    key_vault_decisions(&p);
                    policies.push(p);
                }
                "ServicePrincipal" => {
                    let sp: ServicePrincipal = serde_json::from_value(admitted.clone()).unwrap();
                    assert_eq!(reconcile::spec_problems(kind, &sp), Vec::<String>::new());
                    service_principal_decisions(&sp);
                }
                "CredentialRotation" => {
                    let crot: CredentialRotation =
                        serde_json::from_value(admitted.clone()).unwrap();
                    assert_eq!(reconcile::spec_problems(kind, &crot), Vec::<String>::new());
                    rotation_decisions(&crot);
                }
                _ => {
                    let rd: RoleDelegation = serde_json::from_value(admitted.clone()).unwrap();
                    assert_eq!(reconcile::spec_problems(kind, &rd), Vec::<String>::new());
                    role_decisions(&rd, &policies);
                }
            }));
            if outcome.is_err() {
                panic!(
                    "{kind} admitted with spec {shown} panicked the operator's decoding or decisions"
                );
            }
        }
        eprintln!("{kind}: {accepted} of {PER_KIND} admitted");
        // Not vacuous: admission lets a fair share through, so that the decisions really run.
        assert!(
            accepted >= PER_KIND / 10,
            "only {accepted} of {PER_KIND} generated {kind}s were admitted"
        );
    }
    assert!(
        bound_refusals > 0,
        "the boundary durations reached admission and some were refused for the bound"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn the_issue_object_is_refused_naming_overlap() {
    let client = admin_client().await;
    install_generated_crds(&client).await;
    let ns = TestNamespace::new(&client, "admission-bound").await;
    let api = dynamic_api(&client, &ns.name, "CredentialRotation");
    // Every duration field, past the bound and past what Go (and so CEL) can hold: each is refused by name.
    let cases = [
        ("overlap", "9999999999999999h"),
        ("overlap", "87601h"),
        ("renewBefore", "2562048h"),
        ("rotateEvery", "87600h1ns"),
        ("credentialLifetime", "99999999999999999999999999999ns"),
    ];
    for (field, value) in cases {
        let mut object = issue_object("bound");
        object["spec"]["overlap"] = json!("1h");
        object["spec"][field] = json!(value);
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        match api.create(&PostParams::default(), &object).await {
            Err(kube::Error::Api(s)) if s.code == 422 => assert!(
                s.message.contains(&format!("spec.{field}"))
                    && s.message.contains("must be at most 87600h"),
                "{field}={value}: {}",
                s.message
            ),
            other => panic!("{field}={value} was not refused: {other:?}"),
        }
    }
    let object: DynamicObject = serde_json::from_value(issue_object("issue")).unwrap();
    match api.create(&PostParams::default(), &object).await {
        Err(kube::Error::Api(s)) if s.code == 422 => {
            assert!(
                s.message.contains("spec.overlap") && s.message.contains("must be at most 87600h"),
                "{}",
                s.message
            )
        }
        other => panic!("the object of issue 13 was not refused: {other:?}"),
    }
    // The bound itself is allowed.
    let mut at_bound = issue_object("at-bound");
    at_bound["spec"]["overlap"] = json!("1h");
    at_bound["spec"]["renewBefore"] = json!("87600h");
    let at_bound: DynamicObject = serde_json::from_value(at_bound).unwrap();
    api.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &at_bound,
    )
    .await
    .unwrap();
    ns.cleanup().await;
}

/// The generated CRDs without the duration bound: the schema of an operator version from before it, under
/// which the object of issue 13 was admitted and stored.
fn without_the_bound() -> Vec<CustomResourceDefinition> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Array(rules)) = map.get_mut("x-kubernetes-validations") {
                    rules.retain(|r| !r["rule"].as_str().unwrap_or_default().contains("87600h"));
                    if rules.is_empty() {
                        map.remove("x-kubernetes-validations");
                    }
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    api::crds()
        .into_iter()
        .filter(|c| c.spec.names.kind == "CredentialRotation")
        .map(|crd| {
            let mut v = serde_json::to_value(crd).unwrap();
            strip(&mut v);
            serde_json::from_value(v).unwrap()
        })
        .collect()
}

// Four workers: the test blocks one reading the operator's log while the emulator serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stored_object_that_cannot_be_used_is_reported_and_the_rest_reconcile() {
    let Setup {
        admin,
        ns,
        kubeconfig,
        azure,
        rbac,
        _dir,
    } = Setup::new("invalid-stored").await;
    install_generated_crds(&admin).await;
    let sps: Api<ServicePrincipal> = Api::namespaced(admin.clone(), &ns.name);
    let crots: Api<CredentialRotation> = Api::namespaced(admin.clone(), &ns.name);
    let raw = dynamic_api(&admin, &ns.name, "CredentialRotation");
    for name in ["good", "bad"] {
        let sp: ServicePrincipal = serde_json::from_value(json!({
            "apiVersion": "entra-operator.io/v1alpha1", "kind": "ServicePrincipal",
            "metadata": {"name": name},
            "spec": {"displayName": name, "secret": {"name": format!("{name}-credentials")}},
        }))
        .unwrap();
        sps.create(&PostParams::default(), &sp).await.unwrap();
    }

    // Stored under the schema of before, as on a cluster that upgrades the operator: the object of issue 13.
    // Another test may reinstall the CRDs meanwhile: then try again.
    let mut bad = issue_object("bad");
    bad["spec"]["servicePrincipalRef"]["name"] = json!("bad");
    let bad: DynamicObject = serde_json::from_value(bad).unwrap();
    eventually(60, "the object of issue 13 stored", || async {
        install(&admin, without_the_bound()).await;
        raw.create(&PostParams::default(), &bad)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    install_generated_crds(&admin).await;
    let good: CredentialRotation = serde_json::from_value(json!({
        "apiVersion": "entra-operator.io/v1alpha1", "kind": "CredentialRotation",
        "metadata": {"name": "good"},
        "spec": {"servicePrincipalRef": {"name": "good"}, "renewBefore": "720h", "overlap": "1s"},
    }))
    .unwrap();
    crots.create(&PostParams::default(), &good).await.unwrap();

    // Started with both stored: its first list holds the object it cannot use.
    let mut operator = Operator::start_with(&kubeconfig, &azure.env);
    operator.wait_for("operator ready", Duration::from_secs(30));
    wait_condition(&crots, "good", "True", "Ready", 60).await;
    let reported = wait_condition(&crots, "bad", "False", "InvalidSpec", 30).await;
    let message = ready_of(&reported).unwrap().2;
    assert!(
        message.contains("spec.overlap")
            && message.contains("9999999999999999h")
            && message.contains("maximum of 87600h"),
        "{message}"
    );
    assert!(
        reported
            .meta()
            .finalizers
            .as_deref()
            .unwrap_or_default()
            .is_empty(),
        "nothing was done for it, so nothing needs cleaning up"
    );
    assert_eq!(
        reported.status.as_ref().unwrap().current_key_id,
        None,
        "no secret was issued for it"
    );
    let events = Api::<Event>::namespaced(admin.clone(), &ns.name);
    eventually(30, "an InvalidSpec Event on bad", || async {
        let list = events
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("InvalidSpec")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("spec.overlap"))
            })
            .map(|_| ())
            .ok_or_else(|| format!("{} events, none InvalidSpec on bad", list.items.len()))
    })
    .await;

    // Deleting it works as for any object.
    delete_and_wait(&crots, "bad", 30, "bad deleted").await;
    crots
        .delete_collection(&Default::default(), &Default::default())
        .await
        .unwrap();
    eventually(60, "every rotation deleted", || async {
        let left = crots
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        if left.items.is_empty() {
            Ok(())
        } else {
            Err(format!("{} left", left.items.len()))
        }
    })
    .await;
    sps.delete_collection(&Default::default(), &Default::default())
        .await
        .unwrap();
    crate::harness::all_gone(&sps, 60).await;
    operator.stop();
    teardown(rbac, azure, ns).await;
}
