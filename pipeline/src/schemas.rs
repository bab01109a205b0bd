//! The schema directory: every `*.json` file below it is a JSON Schema for event payloads that
//! names what it applies to with three annotations — `x-sentinel-tenant` (a tenant or `*`),
//! `x-sentinel-type` and `x-sentinel-schema-version`. The directory is polled and the registry
//! replaced whole when any file changes; a broken file keeps the previous registry in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use operators::validate::{SchemaRegistry, SharedRegistry, UnknownTypePolicy};

fn schema_files(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            schema_files(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            found.push(path);
        }
    }
    Ok(())
}

/// Builds a registry from every schema file below `dir` (an absent directory is empty).
pub fn load(dir: &Path, policy: UnknownTypePolicy) -> anyhow::Result<SchemaRegistry> {
    let mut registry = SchemaRegistry::new(policy);
    if !dir.exists() {
        return Ok(registry);
    }
    let mut files = Vec::new();
    schema_files(dir, &mut files).with_context(|| format!("listing {}", dir.display()))?;
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let schema: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", file.display()))?;
        let tenant = schema["x-sentinel-tenant"].as_str();
        let event_type = schema["x-sentinel-type"].as_str();
        let version = schema["x-sentinel-schema-version"].as_i64();
        let (Some(tenant), Some(event_type), Some(version)) = (tenant, event_type, version) else {
            bail!(
                "{} needs x-sentinel-tenant (a tenant or \"*\"), x-sentinel-type and \
                 x-sentinel-schema-version",
                file.display()
            );
        };
        let tenant = (tenant != "*").then_some(tenant);
        let version = i32::try_from(version)
            .with_context(|| format!("{}: version out of range", file.display()))?;
        registry
            .add(tenant, event_type, version, &schema)
            .with_context(|| file.display().to_string())?;
    }
    Ok(registry)
}

fn signature(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut files = Vec::new();
    if dir.exists() && schema_files(dir, &mut files).is_err() {
        return Vec::new();
    }
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let meta = std::fs::metadata(&file).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (file, modified, len)
        })
        .collect()
}

/// Loads the directory and keeps reloading it every `interval` on a thread of its own.
pub fn watch(
    dir: PathBuf,
    policy: UnknownTypePolicy,
    interval: Duration,
) -> anyhow::Result<SharedRegistry> {
    // The files' signature is taken before they are read: a file changed while the first load
    // reads the directory then differs at the first poll and is read again.
    let loaded = signature(&dir);
    let registry = load(&dir, policy)?;
    tracing::info!(dir = %dir.display(), schemas = registry.len(), "schemas loaded");
    let shared: SharedRegistry = Arc::new(RwLock::new(Arc::new(registry)));
    let handle = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("schema-reload".into())
        .spawn(move || {
            let mut last = loaded;
            loop {
                std::thread::sleep(interval);
                let now = signature(&dir);
                if now == last {
                    continue;
                }
                last = now;
                match load(&dir, policy) {
                    Ok(registry) => {
                        tracing::info!(schemas = registry.len(), "schemas reloaded");
                        *handle.write().expect("schema registry lock") = Arc::new(registry);
                    }
                    Err(err) => tracing::error!(
                        error = format!("{err:#}"),
                        "schema directory is invalid; the previous schemas stay in force"
                    ),
                }
            }
        })
        .context("starting the schema reload thread")?;
    Ok(shared)
}
