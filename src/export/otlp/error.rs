//! Export failures, and the one place that decides which of them are retried.

use std::time::Duration;

use http::StatusCode;
use tonic::Code;
use tonic_types::StatusExt;

/// Why one export attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum OtlpExportError {
    #[error("gRPC {code:?}: {message}", code = .0.code(), message = .0.message())]
    Grpc(tonic::Status),
    #[error("HTTP {status}: {message}")]
    Http {
        status: StatusCode,
        retry_after: Option<Duration>,
        message: String,
    },
    /// Connection refused or reset, DNS, TLS handshake, timeout: the request may not have
    /// reached the backend.
    #[error("transport error: {0}")]
    Transport(String),
    #[error("invalid exporter setup: {0}")]
    Setup(String),
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Give up on this batch: retrying cannot help.
    Never,
    /// Retry, after the backend's requested delay if it gave one.
    After(Option<Duration>),
}

impl OtlpExportError {
    /// Retryability exactly as the OTLP specification lists it: gRPC CANCELLED,
    /// DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS, and RESOURCE_EXHAUSTED
    /// only with RetryInfo; HTTP 429, 502, 503 and 504. Transport errors are retried.
    pub fn retry(&self) -> RetryDecision {
        match self {
            OtlpExportError::Grpc(status) => {
                let delay = status
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay);
                match status.code() {
                    Code::Cancelled
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::OutOfRange
                    | Code::Unavailable
                    | Code::DataLoss => RetryDecision::After(delay),
                    Code::ResourceExhausted if status.get_details_retry_info().is_some() => {
                        RetryDecision::After(delay)
                    }
                    _ => RetryDecision::Never,
                }
            }
            OtlpExportError::Http {
                status,
                retry_after,
                ..
            } => match status.as_u16() {
                429 | 502 | 503 | 504 => RetryDecision::After(*retry_after),
                _ => RetryDecision::Never,
            },
            OtlpExportError::Transport(_) => RetryDecision::After(None),
            OtlpExportError::Setup(_) => RetryDecision::Never,
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::ErrorDetails;

    use super::*;

    #[track_caller]
    fn grpc(code: Code) -> RetryDecision {
        OtlpExportError::Grpc(tonic::Status::new(code, "x")).retry()
    }

    #[track_caller]
    fn http(code: u16, retry_after: Option<Duration>) -> RetryDecision {
        OtlpExportError::Http {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after,
            message: String::new(),
        }
        .retry()
    }

    #[test]
    fn grpc_codes_follow_the_specification() {
        let retryable = [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ];
        let final_ = [
            Code::Unknown,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::Internal,
            Code::Unauthenticated,
        ];
        for code in retryable {
            assert_eq!(grpc(code), RetryDecision::After(None), "{code:?}");
        }
        for code in final_ {
            assert_eq!(grpc(code), RetryDecision::Never, "{code:?}");
        }
        let with_info = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        assert_eq!(
            OtlpExportError::Grpc(with_info).retry(),
            RetryDecision::After(Some(Duration::from_secs(3)))
        );
    }

    #[test]
    fn http_statuses_follow_the_specification() {
        let delay = Some(Duration::from_secs(2));
        for code in [429, 502, 503, 504] {
            assert_eq!(http(code, delay), RetryDecision::After(delay), "{code}");
        }
        for code in [400, 401, 403, 404, 413, 415, 500, 501] {
            assert_eq!(http(code, delay), RetryDecision::Never, "{code}");
        }
        assert_eq!(
            OtlpExportError::Transport("refused".into()).retry(),
            RetryDecision::After(None)
        );
    }
}
