//! Limits on request bodies while they arrive, for both OTLP transports: a deadline for the
//! whole body (`receiver.connections.body_read_timeout_ms`), and the memory budget, which
//! every frame is charged to as it comes in. A request's bytes are thus counted from their
//! first byte, not only once the body is complete: many clients that send most of a large
//! body and stall cannot hold more memory than the budget.
//!
//! A failing body ends with a [`BodyLimitError`], which [`super::body::read_limited`] turns
//! into an [`IngestError`](super::IngestError) for both transports. Its source is the
//! matching `tonic::Status`, for readers that look for one in a body error's source chain.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use tonic_types::{ErrorDetails, StatusExt};

use crate::pipeline::{BudgetPermit, MemoryBudget};

/// Why a request body was cut short.
#[derive(Debug, thiserror::Error)]
pub enum BodyLimitError {
    #[error("the request body did not arrive within {limit:?} (receiver.connections.body_read_timeout_ms)")]
    Timeout {
        limit: Duration,
        #[source]
        status: tonic::Status,
    },
    #[error("the memory budget of {limit} bytes is in use; retry after {retry_after:?}")]
    OverBudget {
        limit: u64,
        retry_after: Duration,
        #[source]
        status: tonic::Status,
    },
}

impl BodyLimitError {
    fn timeout(limit: Duration) -> Self {
        let status = tonic::Status::deadline_exceeded(format!(
            "the request body did not arrive within {limit:?}"
        ));
        BodyLimitError::Timeout { limit, status }
    }

    fn over_budget(limit: u64, retry_after: Duration) -> Self {
        let status = tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            format!("the memory budget of {limit} bytes is in use"),
            ErrorDetails::with_retry_info(Some(retry_after)),
        );
        BodyLimitError::OverBudget {
            limit,
            retry_after,
            status,
        }
    }

    /// The [`BodyLimitError`] in `error`'s source chain, if any.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyLimitError> {
        std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref())
    }
}

/// Wraps every request body of `router` in the limits: `deadline` (none when `None`) and
/// `budget`, refusing with `retry_after` when it is full.
pub fn limit_bodies(
    router: Router,
    deadline: Option<Duration>,
    budget: MemoryBudget,
    retry_after: Duration,
) -> Router {
    router.layer(axum::middleware::map_request(
        move |request: axum::extract::Request| {
            let budget = budget.clone();
            async move {
                request.map(|body| {
                    Body::new(LimitedBody {
                        inner: body,
                        deadline: deadline.map(|d| (Box::pin(tokio::time::sleep(d)), d)),
                        budget,
                        retry_after,
                        held: None,
                    })
                })
            }
        },
    ))
}

struct LimitedBody {
    inner: Body,
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
    budget: MemoryBudget,
    retry_after: Duration,
    /// The budget the frames received so far hold, returned when the body is dropped (the
    /// receiver then charges the request once more, by its decoded size, at admission).
    held: Option<BudgetPermit>,
}

/// Longest a refused body's remainder is read and dropped when it has no deadline of its own.
const DRAIN_AT_MOST: Duration = Duration::from_secs(30);

impl LimitedBody {
    /// A frame did not fit the budget. The body ends now, so the receiver drops what it has
    /// collected and the budget is free for others at once; the rest of the body is read and
    /// dropped by a task of its own (until the body's deadline), so that the client, once it
    /// has sent everything, reads the throttling answer instead of a broken connection.
    fn refuse(&mut self) -> axum::Error {
        self.held = None;
        let mut rest = std::mem::replace(&mut self.inner, Body::empty());
        let until = self
            .deadline
            .as_ref()
            .map_or(tokio::time::Instant::now() + DRAIN_AT_MOST, |(sleep, _)| {
                sleep.deadline()
            });
        tokio::spawn(async move {
            let drain = async { while let Some(Ok(_)) = rest.frame().await {} };
            let _ = tokio::time::timeout_at(until, drain).await;
        });
        axum::Error::new(BodyLimitError::over_budget(
            self.budget.limit(),
            self.retry_after,
        ))
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                let len = data.map_or(0, Bytes::len);
                match self.budget.try_admit(len) {
                    Some(permit) => match &mut self.held {
                        Some(held) => held.merge(permit),
                        None => self.held = Some(permit),
                    },
                    None => return Poll::Ready(Some(Err(self.refuse()))),
                }
            }
            return Poll::Ready(frame);
        }
        if let Some((sleep, limit)) = &mut self.deadline {
            if sleep.as_mut().poll(cx).is_ready() {
                let error = BodyLimitError::timeout(*limit);
                return Poll::Ready(Some(Err(axum::Error::new(error))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Sender = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

    /// A body whose frames the test sends one at a time.
    fn channel_body() -> (Sender, Body) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (tx, Body::new(http_body_util::StreamBody::new(stream)))
    }

    fn limited(body: Body, budget: &MemoryBudget, deadline: Option<Duration>) -> LimitedBody {
        LimitedBody {
            inner: body,
            deadline: deadline.map(|d| (Box::pin(tokio::time::sleep(d)), d)),
            budget: budget.clone(),
            retry_after: Duration::from_secs(1),
            held: None,
        }
    }

    #[tokio::test]
    async fn frames_hold_the_budget_until_the_body_is_dropped() {
        let budget = MemoryBudget::new(100);
        let (tx, body) = channel_body();
        let mut body = limited(body, &budget, None);
        tx.try_send(Ok(Frame::data(Bytes::from(vec![0u8; 60]))))
            .unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap().len(), 60);
        assert_eq!(budget.used(), 60);
        // A frame that does not fit ends the body at once with a throttling error and gives
        // the budget back (the caller drops what it collected); a task reads the rest and drops
        // it, so the client can finish sending and read the answer.
        tx.try_send(Ok(Frame::data(Bytes::from(vec![0u8; 50]))))
            .unwrap();
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(budget.used(), 0, "a refused body holds nothing");
        tx.try_send(Ok(Frame::data(Bytes::from(vec![0u8; 500]))))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(tx.capacity(), 4, "the rest of the body is read");
        assert_eq!(budget.used(), 0, "and not charged");
        let found = BodyLimitError::find(&error).expect("a BodyLimitError");
        assert!(matches!(
            found,
            BodyLimitError::OverBudget { limit: 100, .. }
        ));
        let status = tonic::Status::from_error(Box::new(error));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.get_error_details().retry_info().is_some());
        drop(body);
        let mut body = limited(Body::from(vec![1u8; 40]), &budget, None);
        body.frame().await.unwrap().unwrap();
        assert_eq!(budget.used(), 40);
        drop(body);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_body_past_its_deadline_ends_with_deadline_exceeded() {
        let budget = MemoryBudget::new(100);
        let (_tx, body) = channel_body();
        let mut body = limited(body, &budget, Some(Duration::from_millis(50)));
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(
            BodyLimitError::find(&error),
            Some(BodyLimitError::Timeout { .. })
        ));
        assert_eq!(
            tonic::Status::from_error(Box::new(error)).code(),
            tonic::Code::DeadlineExceeded
        );
    }
}
