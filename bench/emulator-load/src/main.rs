//! emulator-load: drives a running azure-emulator with a mixed Microsoft Graph load, from its own process.
//!
//! It seeds N applications owned by the operator identity (POST /_emulator/seed, in chunks), gives the
//! operator a client secret, turns throttling off (PATCH /_emulator/knobs), takes a Graph token, and then,
//! for each concurrency level, runs a fixed duration of ~80% reads and ~20% writes:
//!
//! - reads (equal shares): `GET /applications/{id}`, `GET /applications(appId='…')`,
//!   `GET /applications?$filter=appId eq '…'&$select=id,appId`
//! - writes (equal shares of operations): `PATCH /applications/{id}` (tags), and `addPassword` followed by
//!   `removePassword` of the key just added, on the same application
//!
//! It reports requests/s, latency percentiles, and non-2xx answers per route (and, given the emulator's pid,
//! the CPU time each process spent per request).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const OPERATOR_APP_ID: &str = "0e0e0e0e-0000-4000-8000-00000000e0e0";
const OPERATOR_OBJECT_ID: &str = "0e0e0e0e-0000-4000-8000-00000000a0a0";
const OPERATOR_SP_ID: &str = "0e0e0e0e-0000-4000-8000-00000000b0b0";

#[derive(Parser, Debug)]
#[command(name = "emulator-load", version)]
struct Args {
    /// KEY=value file written by `azure-emulator --env-file` (AZURE_EMULATOR_URL, AZURE_TENANT_ID,
    /// AZURE_EMULATOR_CA_FILE); explicit flags and environment variables take precedence.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    #[arg(long, env = "AZURE_EMULATOR_URL")]
    url: Option<String>,
    #[arg(long, env = "AZURE_EMULATOR_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[arg(long, env = "AZURE_TENANT_ID")]
    tenant: Option<String>,
    /// Applications to seed (owned by the operator).
    #[arg(long, default_value_t = 10_000)]
    apps: usize,
    /// Applications per POST /_emulator/seed.
    #[arg(long, default_value_t = 1_000)]
    seed_chunk: usize,
    /// Skip seeding (the applications are already there from an earlier run against the same emulator).
    #[arg(long)]
    no_seed: bool,
    /// Measured seconds per concurrency level.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Unmeasured seconds before each level.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Concurrency levels (requests in flight), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    concurrency: Vec<usize>,
    /// h1: a pool of HTTP/1.1 connections (one per request in flight); h2: multiplexed HTTP/2 connections.
    #[arg(long, default_value = "h1", value_parser = ["h1", "h2"])]
    protocol: String,
    /// Separate clients (for h2: separate connections); workers are spread over them.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Read ops : PATCH ops : addPassword+removePassword ops. 12:1:1 makes 20% of requests writes.
    #[arg(long, default_value = "12:1:1")]
    mix: String,
    /// Which read routes to use, comma-separated: id, appid, filter (all three by default).
    #[arg(long, value_delimiter = ',', default_value = "id,appid,filter", value_parser = ["id", "appid", "filter"])]
    read_routes: Vec<String>,
    /// The emulator's pid, to report its CPU time per request (from /proc).
    #[arg(long)]
    emulator_pid: Option<u32>,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Deterministic ids of the i-th seeded application.
fn app_ids(i: usize) -> (String, String, String) {
    (
        format!("10ad0000-0000-4000-8000-{i:012x}"),
        format!("10ad0000-0000-4000-9000-{i:012x}"),
        format!("10ad0000-0000-4000-a000-{i:012x}"),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Route {
    GetById,
    GetByAppId,
    ListFilter,
    PatchTags,
    AddPassword,
    RemovePassword,
}

impl Route {
    const ALL: [Route; 6] = [
        Route::GetById,
        Route::GetByAppId,
        Route::ListFilter,
        Route::PatchTags,
        Route::AddPassword,
        Route::RemovePassword,
    ];
    fn name(self) -> &'static str {
        match self {
            Route::GetById => "GET /applications/{id}",
            Route::GetByAppId => "GET /applications(appId='{appId}')",
            Route::ListFilter => "GET /applications?$filter=appId eq '{appId}'&$select=id,appId",
            Route::PatchTags => "PATCH /applications/{id} (tags)",
            Route::AddPassword => "POST /applications/{id}/addPassword",
            Route::RemovePassword => "POST /applications/{id}/removePassword",
        }
    }
    fn write(self) -> bool {
        matches!(
            self,
            Route::PatchTags | Route::AddPassword | Route::RemovePassword
        )
    }
}

#[derive(Default)]
struct Stats {
    /// Latency in microseconds, per route.
    latencies: BTreeMap<Route, Vec<u32>>,
    /// Non-2xx answers per route and status (0: no answer).
    non2xx: BTreeMap<Route, BTreeMap<u16, u64>>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        for (r, mut l) in other.latencies {
            self.latencies.entry(r).or_default().append(&mut l);
        }
        for (r, m) in other.non2xx {
            for (s, n) in m {
                *self.non2xx.entry(r).or_default().entry(s).or_default() += n;
            }
        }
    }
}

struct Ctx {
    graph: String,
    token: String,
    apps: usize,
    mix: (usize, usize, usize),
    reads: Vec<Route>,
}

/// Sends one request and records it; returns the response body when it was a 2xx.
async fn call(
    client: &Client,
    ctx: &Ctx,
    stats: &mut Stats,
    route: Route,
    measured: bool,
    req: reqwest::RequestBuilder,
) -> Option<Value> {
    let started = Instant::now();
    let result = req.bearer_auth(&ctx.token).send().await;
    let (status, body) = match result {
        Ok(resp) => {
            let status = resp.status();
            let bytes = resp.bytes().await.unwrap_or_default();
            (status.as_u16(), Some(bytes))
        }
        Err(_) => (0, None),
    };
    let _ = client;
    let micros = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
    if measured {
        stats.latencies.entry(route).or_default().push(micros);
        if !(200..300).contains(&status) {
            *stats
                .non2xx
                .entry(route)
                .or_default()
                .entry(status)
                .or_default() += 1;
        }
    }
    if (200..300).contains(&status) {
        body.map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null))
    } else {
        None
    }
}

async fn worker(
    client: Client,
    ctx: Arc<Ctx>,
    seed: u64,
    measure_from: Instant,
    until: Instant,
) -> Stats {
    let mut rng = Rng(seed);
    let mut stats = Stats::default();
    let g = &ctx.graph;
    let (reads, patches, pairs) = ctx.mix;
    let total = reads + patches + pairs;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let measured = now >= measure_from;
        let i = rng.below(ctx.apps);
        let (app_id, object_id, _) = app_ids(i);
        let op = rng.below(total);
        if op < reads {
            let route = ctx.reads[op % ctx.reads.len()];
            let url = match route {
                Route::GetById => format!("{g}/applications/{object_id}"),
                Route::GetByAppId => format!("{g}/applications(appId='{app_id}')"),
                _ => format!("{g}/applications?$filter=appId%20eq%20'{app_id}'&$select=id,appId"),
            };
            call(&client, &ctx, &mut stats, route, measured, client.get(url)).await;
        } else if op < reads + patches {
            let body = json!({"tags": [format!("load:{}", rng.next() % 1000)]}).to_string();
            let req = client
                .patch(format!("{g}/applications/{object_id}"))
                .header("content-type", "application/json")
                .body(body);
            call(&client, &ctx, &mut stats, Route::PatchTags, measured, req).await;
        } else {
            let req = client
                .post(format!("{g}/applications/{object_id}/addPassword"))
                .header("content-type", "application/json")
                .body(r#"{"passwordCredential":{"displayName":"load"}}"#);
            let added = call(&client, &ctx, &mut stats, Route::AddPassword, measured, req).await;
            if let Some(key_id) = added.as_ref().and_then(|v| v["keyId"].as_str()) {
                let req = client
                    .post(format!("{g}/applications/{object_id}/removePassword"))
                    .header("content-type", "application/json")
                    .body(json!({"keyId": key_id}).to_string());
                let measured = measured && Instant::now() < until;
                call(
                    &client,
                    &ctx,
                    &mut stats,
                    Route::RemovePassword,
                    measured,
                    req,
                )
                .await;
            }
        }
    }
    stats
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

/// User+system CPU seconds of a process (Linux /proc; clock ticks of 100 Hz).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn read_env_file(path: &PathBuf) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

fn build_client(ca: &[u8], protocol: &str, pool: usize) -> anyhow::Result<Client> {
    let mut b = Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca)?])
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(pool.max(1))
        .tcp_nodelay(true);
    b = if protocol == "h2" {
        b.http2_prior_knowledge()
    } else {
        b.http1_only()
    };
    Ok(b.build()?)
}

async fn expect_ok(resp: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status != StatusCode::OK {
        bail!("{what}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = match &args.env_file {
        Some(f) => read_env_file(f)?,
        None => BTreeMap::new(),
    };
    let url = args
        .url
        .clone()
        .or_else(|| file.get("AZURE_EMULATOR_URL").cloned())
        .context("no emulator URL (--url, AZURE_EMULATOR_URL or --env-file)")?;
    let tenant = args
        .tenant
        .clone()
        .or_else(|| file.get("AZURE_TENANT_ID").cloned())
        .context("no tenant (--tenant, AZURE_TENANT_ID or --env-file)")?;
    let ca_file = args
        .ca_file
        .clone()
        .or_else(|| file.get("AZURE_EMULATOR_CA_FILE").map(PathBuf::from))
        .context("no CA file (--ca-file, AZURE_EMULATOR_CA_FILE or --env-file)")?;
    let ca = std::fs::read(&ca_file).with_context(|| format!("{}", ca_file.display()))?;
    let mix: Vec<usize> = args
        .mix
        .split(':')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .context("--mix is reads:patches:pairs")?;
    let [reads, patches, pairs] = mix[..] else {
        bail!("--mix is reads:patches:pairs");
    };
    let read_routes: Vec<Route> = args
        .read_routes
        .iter()
        .map(|r| match r.as_str() {
            "id" => Route::GetById,
            "appid" => Route::GetByAppId,
            _ => Route::ListFilter,
        })
        .collect();
    // The reads rotate by op % their number: keep the read share a multiple of it.
    let reads = reads.div_ceil(read_routes.len()) * read_routes.len();
    let admin = build_client(&ca, "h1", 4)?;

    // Wait for the emulator.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.get(format!("{url}/_emulator/health")).send().await {
            Ok(r) if r.status().is_success() => break,
            _ if Instant::now() > deadline => bail!("the emulator at {url} does not answer"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }

    let resp = admin
        .patch(format!("{url}/_emulator/knobs"))
        .header("content-type", "application/json")
        .body(
            json!({"throttling": {"enabled": false}, "replication": {"graphNotFoundMs": 0}, "faults": []})
                .to_string(),
        )
        .send()
        .await?;
    expect_ok(resp, "PATCH /_emulator/knobs").await?;

    // The operator gets a secret of this run; the applications are owned by its service principal.
    let secret = format!(
        "emulator-load-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let mut seeded_in = 0.0;
    let operator = json!({
        "displayName": "entra-operator",
        "appId": OPERATOR_APP_ID,
        "objectId": OPERATOR_OBJECT_ID,
        "servicePrincipalId": OPERATOR_SP_ID,
        "graphPermissions": ["Application.ReadWrite.OwnedBy"],
        "clientSecrets": [secret],
    });
    let resp = admin
        .post(format!("{url}/_emulator/seed"))
        .header("content-type", "application/json")
        .body(json!({"applications": [operator]}).to_string())
        .send()
        .await?;
    expect_ok(resp, "seeding the operator's secret").await?;
    if !args.no_seed {
        let started = Instant::now();
        let mut i = 0;
        while i < args.apps {
            let end = (i + args.seed_chunk).min(args.apps);
            let apps: Vec<Value> = (i..end)
                .map(|n| {
                    let (app_id, object_id, sp_id) = app_ids(n);
                    json!({
                        "displayName": format!("load-app-{n:05}"),
                        "appId": app_id,
                        "objectId": object_id,
                        "servicePrincipalId": sp_id,
                        "owners": [OPERATOR_SP_ID],
                    })
                })
                .collect();
            let resp = admin
                .post(format!("{url}/_emulator/seed"))
                .header("content-type", "application/json")
                .body(json!({"applications": apps}).to_string())
                .send()
                .await?;
            expect_ok(resp, "POST /_emulator/seed").await?;
            i = end;
        }
        seeded_in = started.elapsed().as_secs_f64();
        eprintln!("seeded {} applications in {seeded_in:.2}s", args.apps);
    }

    let resp = admin
        .post(format!("{url}/{tenant}/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id={OPERATOR_APP_ID}&client_secret={secret}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"
        ))
        .send()
        .await?;
    let token = expect_ok(resp, "token")
        .await?
        .get("access_token")
        .and_then(Value::as_str)
        .context("no access_token")?
        .to_string();
    let ctx = Arc::new(Ctx {
        graph: format!("{url}/v1.0"),
        token,
        apps: args.apps,
        mix: (reads, patches, pairs),
        reads: read_routes.clone(),
    });
    // Sanity: the last seeded application is visible to the operator, by every read route.
    let (app_id, object_id, _) = app_ids(args.apps - 1);
    for u in [
        format!("{}/applications/{object_id}", ctx.graph),
        format!("{}/applications(appId='{app_id}')", ctx.graph),
        format!(
            "{}/applications?$filter=appId%20eq%20'{app_id}'&$select=id,appId",
            ctx.graph
        ),
    ] {
        let resp = admin.get(&u).bearer_auth(&ctx.token).send().await?;
        expect_ok(resp, &u).await?;
    }

    let pid = args.emulator_pid.map(|p| p.to_string());
    let mut levels = vec![];
    for &concurrency in &args.concurrency {
        let clients: Vec<Client> = (0..args.clients.max(1))
            .map(|_| build_client(&ca, &args.protocol, concurrency))
            .collect::<Result<_, _>>()?;
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(args.warmup);
        let until = measure_from + Duration::from_secs_f64(args.duration);
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..concurrency {
            let client = clients[w % clients.len()].clone();
            tasks.spawn(worker(
                client,
                ctx.clone(),
                0x5eed_0000 + (concurrency * 1000 + w) as u64,
                measure_from,
                until,
            ));
        }
        // CPU time of both processes over the measured window.
        tokio::time::sleep_until(measure_from.into()).await;
        let cpu_before = (pid.as_deref().and_then(cpu_seconds), cpu_seconds("self"));
        let wall_from = Instant::now();
        tokio::time::sleep_until(until.into()).await;
        let cpu_after = (pid.as_deref().and_then(cpu_seconds), cpu_seconds("self"));
        let wall = wall_from.elapsed().as_secs_f64();
        let mut stats = Stats::default();
        while let Some(s) = tasks.join_next().await {
            stats.merge(s?);
        }
        let mut all: Vec<u32> = vec![];
        let mut routes = serde_json::Map::new();
        let mut writes = 0usize;
        for r in Route::ALL {
            let mut l = stats.latencies.remove(&r).unwrap_or_default();
            l.sort_unstable();
            if r.write() {
                writes += l.len();
            }
            let non2xx: BTreeMap<String, u64> = stats
                .non2xx
                .get(&r)
                .map(|m| m.iter().map(|(s, n)| (s.to_string(), *n)).collect())
                .unwrap_or_default();
            routes.insert(
                r.name().to_string(),
                json!({
                    "requests": l.len(),
                    "rps": l.len() as f64 / args.duration,
                    "p50_ms": percentile(&l, 0.50),
                    "p90_ms": percentile(&l, 0.90),
                    "p99_ms": percentile(&l, 0.99),
                    "non2xx": non2xx,
                }),
            );
            all.extend(l);
        }
        all.sort_unstable();
        let total = all.len();
        let rps = total as f64 / args.duration;
        let cpu = |i: usize| -> Option<f64> {
            let (b, a) = if i == 0 {
                (cpu_before.0, cpu_after.0)
            } else {
                (cpu_before.1, cpu_after.1)
            };
            Some(a? - b?)
        };
        let level = json!({
            "concurrency": concurrency,
            "protocol": args.protocol,
            "clients": args.clients,
            "duration_s": args.duration,
            "requests": total,
            "write_share": if total > 0 { writes as f64 / total as f64 } else { 0.0 },
            "rps": rps,
            "p50_ms": percentile(&all, 0.50),
            "p90_ms": percentile(&all, 0.90),
            "p99_ms": percentile(&all, 0.99),
            "max_ms": all.last().map_or(0.0, |m| *m as f64 / 1000.0),
            "non2xx": stats.non2xx.values().flat_map(|m| m.values()).sum::<u64>(),
            "emulator_cpu_cores": cpu(0).map(|c| c / wall),
            "generator_cpu_cores": cpu(1).map(|c| c / wall),
            "emulator_cpu_us_per_request": cpu(0).map(|c| c * 1e6 / total.max(1) as f64),
            "generator_cpu_us_per_request": cpu(1).map(|c| c * 1e6 / total.max(1) as f64),
            "routes": routes,
        });
        eprintln!(
            "concurrency {concurrency:>4} ({}, {} client(s)): {rps:>8.0} req/s  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  writes {:.0}%  non-2xx {}  emulator CPU {} cores, generator {} cores",
            args.protocol,
            args.clients,
            level["p50_ms"].as_f64().unwrap_or(0.0),
            level["p90_ms"].as_f64().unwrap_or(0.0),
            level["p99_ms"].as_f64().unwrap_or(0.0),
            level["write_share"].as_f64().unwrap_or(0.0) * 100.0,
            level["non2xx"],
            level["emulator_cpu_cores"]
                .as_f64()
                .map_or("?".into(), |c| format!("{c:.2}")),
            level["generator_cpu_cores"]
                .as_f64()
                .map_or("?".into(), |c| format!("{c:.2}")),
        );
        for r in Route::ALL {
            let v = &level["routes"][r.name()];
            eprintln!(
                "    {:<64} {:>7.0}/s  p50 {:>7.2}  p90 {:>7.2}  p99 {:>7.2} ms  non-2xx {}",
                r.name(),
                v["rps"].as_f64().unwrap_or(0.0),
                v["p50_ms"].as_f64().unwrap_or(0.0),
                v["p90_ms"].as_f64().unwrap_or(0.0),
                v["p99_ms"].as_f64().unwrap_or(0.0),
                v["non2xx"],
            );
        }
        levels.push(level);
    }
    let out = json!({
        "generator": {"name": "emulator-load", "version": env!("CARGO_PKG_VERSION")},
        "url": url,
        "applications": args.apps,
        "seeded_in_s": seeded_in,
        "mix": {"read_ops": reads, "patch_ops": patches, "add_remove_password_ops": pairs, "read_routes": args.read_routes},
        "levels": levels,
    });
    match &args.json_out {
        Some(f) => std::fs::write(f, serde_json::to_vec_pretty(&out)?)?,
        None => println!("{}", serde_json::to_string_pretty(&out)?),
    }
    Ok(())
}
