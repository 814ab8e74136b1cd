//! Logs and OpenTelemetry traces of every role.
//!
//! Each process logs to stderr and, when the configuration names a collector, exports its spans
//! over OTLP/HTTP (protobuf) from a batch processor: API, proxy and SSH gateway to
//! `OTEL_COLLECTOR_URL` (with `OTEL_COLLECTOR_API_KEY` as bearer), a runner-only process to
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (with `OTEL_EXPORTER_OTLP_HEADERS`) when `OTEL_TRACING_ENABLED`.
//! Calls between our processes carry the W3C `traceparent` header ([`trace_headers`] on the
//! client, [`server_span`] on the server), so one SDK request is one trace across processes.
//! A collector that does not answer never slows a request: spans wait in the batch queue, are
//! dropped when it is full, and the failure is logged once until the collector answers again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use daytona_config::{Config, Role};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how this process exports its spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The full OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// Sent with every export (authentication).
    pub headers: HashMap<String, String>,
    /// `service.name` of this process's spans.
    pub service_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTEL_EXPORTER_OTLP_HEADERS: {0}")]
    Headers(String),
    #[error("cannot set up the OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

impl Export {
    /// What the configuration asks of a process running `config.server.roles`: the API, proxy
    /// and SSH gateway use the API's settings (upstream's API and proxy read them); a process
    /// that is only a runner uses the runner's.
    pub fn from_config(config: &Config) -> Result<Option<Export>, TelemetryError> {
        let roles = &config.server.roles;
        let service_name = service_name(roles.iter().map(|r| r.as_str()));
        let only_runner = roles.iter().all(|r| r == Role::Runner);
        let otel = &config.otel;
        if !only_runner {
            return Ok(otel.api_traces.as_ref().map(|api| Export {
                endpoint: api.collector_url.clone(),
                headers: HashMap::from([(
                    "authorization".to_string(),
                    format!("Bearer {}", api.api_key.expose()),
                )]),
                service_name,
            }));
        }
        let Some(base) = otel
            .runner_exporter_endpoint
            .as_deref()
            .filter(|_| otel.enabled && otel.runner_tracing_enabled)
        else {
            return Ok(None);
        };
        let headers = match &otel.runner_exporter_headers {
            Some(h) => parse_headers(h.expose()).map_err(TelemetryError::Headers)?,
            None => HashMap::new(),
        };
        Ok(Some(Export {
            endpoint: traces_url(base),
            headers,
            service_name,
        }))
    }
}

/// `daytona-api`, `daytona-runner`, or the roles of a combined process joined with `+`.
fn service_name<'a>(roles: impl Iterator<Item = &'a str>) -> String {
    format!("daytona-{}", roles.collect::<Vec<_>>().join("+"))
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` is the collector's base URL; the traces path is appended as
/// the OpenTelemetry specification says, unless it is already there.
fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// `key1=value1,key2=value2`, values percent-encoded (the OpenTelemetry environment format).
pub fn parse_headers(text: &str) -> Result<HashMap<String, String>, String> {
    let mut headers = HashMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("expected key=value pairs separated by commas, got {pair:?}"))?;
        let key = key.trim();
        if key.is_empty() || http::HeaderName::from_bytes(key.as_bytes()).is_err() {
            return Err(format!("{key:?} is not a header name"));
        }
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| format!("the value of {key} is not UTF-8 once decoded"))?;
        headers.insert(key.to_ascii_lowercase(), value.into_owned());
    }
    Ok(headers)
}

/// Flushes the exporter when dropped or [`shutdown`](Telemetry::shutdown).
#[must_use = "spans are flushed when this is shut down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still queued (bounded by the export timeout) and stops the exporter.
    pub fn shutdown(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "spans not exported at shutdown");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Installs the global subscriber: stderr logs filtered by `log_filter` (`DAYTONA_LOG`), plus
/// span export when `export` is given. Call once, before the async runtime starts (the exporter's
/// HTTP client runs on its own thread).
/// The exporter's HTTP client honours `outbound`'s proxies and extra CAs.
pub fn init(
    log_filter: &str,
    export: Option<Export>,
    outbound: &daytona_outbound::Outbound,
) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let provider = export
        .as_ref()
        .map(|export| provider(export, outbound))
        .transpose()?;
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("daytona"))
            .with_tracked_inactivity(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    if let Some(export) = &export {
        tracing::info!(endpoint = %export.endpoint, service = %export.service_name, "exporting traces");
    }
    Ok(Telemetry { provider })
}

fn provider(
    export: &Export,
    outbound: &daytona_outbound::Outbound,
) -> Result<SdkTracerProvider, TelemetryError> {
    let failed = |reason: String| TelemetryError::Exporter {
        endpoint: export.endpoint.clone(),
        reason,
    };
    // Built here, before the async runtime starts: a blocking client cannot be built inside it.
    let http = outbound
        .blocking_client_builder()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(http)
        .with_endpoint(&export.endpoint)
        .with_headers(export.headers.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(ReportOnce {
            inner: exporter,
            endpoint: export.endpoint.clone(),
            failing: AtomicBool::new(false),
        })
        .with_resource(
            Resource::builder()
                .with_service_name(export.service_name.clone())
                .build(),
        )
        .build())
}

/// Logs the first failed export and the first success after it, not every batch.
#[derive(Debug)]
struct ReportOnce<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for ReportOnce<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(endpoint = %self.endpoint, error = %e, "cannot export spans; dropping them until the collector answers");
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.endpoint, "exporting spans again");
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The current span's trace context as W3C `traceparent` (and `tracestate`) headers, for a call
/// to another of our processes; empty when nothing is traced.
pub fn trace_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut headers));
    headers
}

/// The current span's trace context as W3C fields (`traceparent`, `tracestate`), for work that
/// another process picks up later (a runner's job); empty when nothing is traced.
pub fn trace_context() -> HashMap<String, String> {
    let mut fields = HashMap::new();
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut fields);
    fields
}

/// Makes `span` a child of the trace context `fields` ([`trace_context`]) carried from another
/// process; without a valid `traceparent` the span starts its own trace.
pub fn continue_trace(span: &tracing::Span, fields: &HashMap<String, String>) {
    let parent = TraceContextPropagator::new().extract(fields);
    // Fails only when no OpenTelemetry layer is installed; the span is then a plain log span.
    let _ = span.set_parent(parent);
}

/// The span of one served HTTP request (for `tower_http::trace::TraceLayer::make_span_with`),
/// continuing the caller's trace when the request carries a `traceparent`.
pub fn server_span<B>(request: &http::Request<B>) -> tracing::Span {
    let method = request.method();
    let path = request.uri().path();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {path}"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    // Fails only when no OpenTelemetry layer is installed; the span is then a plain log span.
    let _ = span.set_parent(parent);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .expect("valid configuration")
    }

    #[test]
    fn headers_parse_the_opentelemetry_format() {
        let h = parse_headers("Authorization=Bearer%20abc, x-tenant=a=b").unwrap();
        assert_eq!(h["authorization"], "Bearer abc");
        assert_eq!(h["x-tenant"], "a=b");
        assert!(parse_headers("novalue").unwrap_err().contains("key=value"));
        assert!(
            parse_headers("bad header=x")
                .unwrap_err()
                .contains("header name")
        );
        assert!(parse_headers("").unwrap().is_empty());
    }

    #[test]
    fn the_api_exports_to_the_collector_url_with_its_key() {
        let export = Export::from_config(&config(&[
            ("DAYTONA_ROLES", "api,proxy"),
            ("OTEL_COLLECTOR_URL", "http://127.0.0.1:4318/v1/traces"),
            ("OTEL_COLLECTOR_API_KEY", "k1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(export.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(export.headers["authorization"], "Bearer k1");
        assert_eq!(export.service_name, "daytona-api+proxy");
        let off = config(&[
            ("OTEL_ENABLED", "false"),
            ("OTEL_COLLECTOR_URL", "http://127.0.0.1:4318/v1/traces"),
        ]);
        assert_eq!(Export::from_config(&off).unwrap(), None);
        assert_eq!(Export::from_config(&config(&[])).unwrap(), None);
    }

    #[test]
    fn a_runner_exports_to_the_otlp_endpoint_when_tracing_is_enabled() {
        let vars = [
            ("DAYTONA_ROLES", "runner"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-key=v%2C1"),
        ];
        assert_eq!(Export::from_config(&config(&vars)).unwrap(), None);
        let mut on = vars.to_vec();
        on.push(("OTEL_TRACING_ENABLED", "true"));
        let export = Export::from_config(&config(&on)).unwrap().unwrap();
        assert_eq!(export.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(export.headers["x-key"], "v,1");
        assert_eq!(export.service_name, "daytona-runner");
        on.push(("OTEL_ENABLED", "false"));
        assert_eq!(Export::from_config(&config(&on)).unwrap(), None);
    }

    #[test]
    fn a_trace_context_carried_elsewhere_continues_the_trace() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let carried = HashMap::from([(
                "traceparent".to_string(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
            )]);
            let job = tracing::info_span!("job");
            continue_trace(&job, &carried);
            let fields = job.in_scope(trace_context);
            let traceparent = &fields["traceparent"];
            assert!(
                traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
                "{traceparent}"
            );
            // A span of its own under the carried parent, not the parent itself.
            assert!(!traceparent.contains("b7ad6b7169203331"), "{traceparent}");

            let fresh = tracing::info_span!("job");
            continue_trace(&fresh, &HashMap::new());
            let own = fresh.in_scope(trace_context);
            assert!(!own["traceparent"].contains("0af7651916cd43dd8448eb211c80319c"));
        });
        assert!(
            trace_context().is_empty(),
            "nothing traced, nothing carried"
        );
    }
}
