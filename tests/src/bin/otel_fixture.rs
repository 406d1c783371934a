//! An application instrumented with the OpenTelemetry Rust SDK (opentelemetry 0.33), exporting
//! spans over OTLP/gRPC to FIXTURE_OTLP_GRPC as service FIXTURE_SERVICE. Its HTTP client writes
//! the request with one `write(2)`, as Go's net/http does.
//!
//!     otel_fixture client-instrumented URL   inject the client span: clean
//!     otel_fixture client-plain URL          spans exported, request sent without context
//!     otel_fixture client-unended URL        inject a span that is never ended

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use opentelemetry::{
    global,
    propagation::TextMapPropagator as _,
    trace::{SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _},
    Context, KeyValue,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};

/// `GET` with the given headers over a fresh connection; the URL is `http://host:port/path`.
fn get(url: &str, headers: &HashMap<String, String>) -> Result<()> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream =
        TcpStream::connect(authority).with_context(|| format!("connect {authority}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!(
            "unexpected response: {}",
            String::from_utf8_lossy(&response)
        );
    }
    Ok(())
}

fn inject(cx: &Context) -> HashMap<String, String> {
    let mut headers = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut headers);
    headers
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (mode, url) = match args.as_slice() {
        [_, mode, url] => (mode.clone(), url.clone()),
        _ => bail!("usage: otel_fixture MODE URL"),
    };
    let endpoint = std::env::var("FIXTURE_OTLP_GRPC").context("FIXTURE_OTLP_GRPC")?;
    let service = std::env::var("FIXTURE_SERVICE").context("FIXTURE_SERVICE")?;
    // With grpc-tonic the provider must be built inside the tokio runtime.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service)
                .with_attribute(KeyValue::new("process.pid", i64::from(std::process::id())))
                .build(),
        )
        .build();
    global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("fixture");

    // The blocking client runs off the runtime's worker threads.
    let result = tokio::task::spawn_blocking(move || -> Result<()> {
        match mode.as_str() {
            "client-instrumented" => {
                let span = tracer
                    .span_builder("call")
                    .with_kind(SpanKind::Client)
                    .start(&tracer);
                let cx = Context::current_with_span(span);
                get(&url, &inject(&cx))?;
                cx.span().end();
            }
            "client-plain" => {
                let span = tracer
                    .span_builder("call")
                    .with_kind(SpanKind::Client)
                    .start(&tracer);
                let cx = Context::current_with_span(span);
                get(&url, &HashMap::new())?;
                cx.span().end();
            }
            "client-unended" => {
                let root = Context::current_with_span(tracer.start("root"));
                let child = tracer.start_with_context("never-ended", &root);
                let child_cx = root.with_span(child);
                get(&url, &inject(&child_cx))?;
                root.span().end();
                // The child is deliberately leaked: dropping it would end (and export) it.
                std::mem::forget(child_cx);
            }
            other => bail!("unknown mode {other}"),
        }
        Ok(())
    })
    .await?;
    provider.force_flush()?;
    provider.shutdown()?;
    result
}
