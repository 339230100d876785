//! What the tests of [`super::wire`] and [`super::json`] share: a corpus of valid requests,
//! and the reference they are compared with, `prost`'s decoding plus OTLP's id lengths.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::Exemplar;
use otelgate_cli::demo::generator::TelemetryGenerator;
use prost::Message;

use crate::Signal;

/// Valid requests of every signal: generated ones and real SDK payloads.
pub fn corpus() -> Vec<(Signal, Vec<u8>)> {
    let mut generator = TelemetryGenerator::new(7);
    let mut corpus = vec![
        (Signal::Traces, generator.traces(4).0.encode_to_vec()),
        (Signal::Logs, generator.logs(5).0.encode_to_vec()),
        (Signal::Metrics, generator.metrics().0.encode_to_vec()),
    ];
    let fixtures = [
        (
            Signal::Traces,
            &include_bytes!(
                "../../tests/fixtures/otlp-sdk-payloads/traces_frames_detections_genai.pb"
            )[..],
        ),
        (
            Signal::Logs,
            &include_bytes!("../../tests/fixtures/otlp-sdk-payloads/logs.pb")[..],
        ),
        (
            Signal::Metrics,
            &include_bytes!("../../tests/fixtures/otlp-sdk-payloads/metrics.pb")[..],
        ),
    ];
    corpus.extend(fixtures.iter().map(|(s, b)| (*s, b.to_vec())));
    corpus
}

/// What validating `body` must answer: its item count if `prost` decodes it and every
/// trace and span id has a length OTLP allows, else why not.
pub fn reference(signal: Signal, body: &[u8]) -> Result<u64, String> {
    match signal {
        Signal::Traces => {
            let request = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
            let spans: Vec<_> = request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .collect();
            for span in &spans {
                id("span trace_id", &span.trace_id, &[16])?;
                id("span span_id", &span.span_id, &[8])?;
                id("parent_span_id", &span.parent_span_id, &[0, 8])?;
                for link in &span.links {
                    id("link trace_id", &link.trace_id, &[0, 16])?;
                    id("link span_id", &link.span_id, &[0, 8])?;
                }
            }
            Ok(spans.len() as u64)
        }
        Signal::Logs => {
            let request = ExportLogsServiceRequest::decode(body).map_err(|e| e.to_string())?;
            let mut records = 0;
            for record in request
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records)
            {
                id("log trace_id", &record.trace_id, &[0, 16])?;
                id("log span_id", &record.span_id, &[0, 8])?;
                records += 1;
            }
            Ok(records)
        }
        Signal::Metrics => {
            let request = ExportMetricsServiceRequest::decode(body).map_err(|e| e.to_string())?;
            let mut points = 0;
            for metric in request
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
            {
                let exemplars: Vec<&Exemplar> = match &metric.data {
                    Some(Data::Gauge(g)) => {
                        points += g.data_points.len() as u64;
                        g.data_points.iter().flat_map(|p| &p.exemplars).collect()
                    }
                    Some(Data::Sum(s)) => {
                        points += s.data_points.len() as u64;
                        s.data_points.iter().flat_map(|p| &p.exemplars).collect()
                    }
                    Some(Data::Histogram(h)) => {
                        points += h.data_points.len() as u64;
                        h.data_points.iter().flat_map(|p| &p.exemplars).collect()
                    }
                    Some(Data::ExponentialHistogram(h)) => {
                        points += h.data_points.len() as u64;
                        h.data_points.iter().flat_map(|p| &p.exemplars).collect()
                    }
                    Some(Data::Summary(s)) => {
                        points += s.data_points.len() as u64;
                        Vec::new()
                    }
                    None => Vec::new(),
                };
                for exemplar in exemplars {
                    id("exemplar trace_id", &exemplar.trace_id, &[0, 16])?;
                    id("exemplar span_id", &exemplar.span_id, &[0, 8])?;
                }
            }
            Ok(points)
        }
    }
}

fn id(what: &str, id: &[u8], lengths: &[usize]) -> Result<(), String> {
    if lengths.contains(&id.len()) {
        Ok(())
    } else {
        Err(format!("{what} of {} bytes", id.len()))
    }
}
