//! Trace export: spans go to an OTLP/HTTP (protobuf) collector configured by the standard
//! `OTEL_*` variables, and only when an endpoint is configured — otherwise no span is built.
//!
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns export on;
//! `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` choose the sampler (default: parent-based,
//! always on); `OTEL_BSP_*` tune batching; `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`
//! describe the service; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off.

use anyhow::{bail, Context};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

fn set(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// Installs the exporter when the environment asks for one; returns the provider to shut down
/// (flushing the last spans) at exit.
pub fn install(service: &str) -> anyhow::Result<Option<SdkTracerProvider>> {
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".to_owned());
    if protocol != "http/protobuf" {
        bail!("OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; Sentinel exports http/protobuf (point it at the collector's OTLP/HTTP port, 4318)");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("configuring the OTLP span exporter")?;
    let mut resource = Resource::builder();
    if set("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    operators::spans::enable();
    tracing::info!(protocol, "exporting traces over OTLP");
    Ok(Some(provider))
}
