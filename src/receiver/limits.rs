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
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(found) = error.downcast_ref::<BodyLimitError>() {
                return Some(found);
            }
            next = error.source();
        }
        None
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
                        draining: false,
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
    /// A frame did not fit the budget: the rest of the body is read and dropped, then the
    /// body ends with the throttling error.
    draining: bool,
}

impl LimitedBody {
    fn over_budget(&self) -> axum::Error {
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
        loop {
            let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) else {
                break;
            };
            if self.draining {
                // Over budget: the rest is read and dropped, so that the client, once it has
                // sent its body, reads the throttling answer instead of a broken connection.
                match frame {
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                    None => return Poll::Ready(Some(Err(self.over_budget()))),
                }
            }
            if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                let len = data.map_or(0, Bytes::len);
                match self.budget.try_admit(len) {
                    Some(permit) => match &mut self.held {
                        Some(held) => held.merge(permit),
                        None => self.held = Some(permit),
                    },
                    // The frames already passed on stay charged: the caller holds them until
                    // the body ends.
                    None => {
                        self.draining = true;
                        continue;
                    }
                }
            }
            return Poll::Ready(frame);
        }
        let expired = match &mut self.deadline {
            Some((sleep, limit)) => sleep.as_mut().poll(cx).is_ready().then_some(*limit),
            None => None,
        };
        if let Some(limit) = expired {
            let error = if self.draining {
                self.over_budget()
            } else {
                axum::Error::new(BodyLimitError::timeout(limit))
            };
            return Poll::Ready(Some(Err(error)));
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
    use http_body_util::BodyExt;

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
            draining: false,
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
        // After a frame that does not fit, the rest of the body is read and dropped, and the
        // body ends with a throttling error; what was passed on stays charged until then.
        tx.try_send(Ok(Frame::data(Bytes::from(vec![0u8; 50]))))
            .unwrap();
        tx.try_send(Ok(Frame::data(Bytes::from(vec![0u8; 500]))))
            .unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(50), body.frame()).await;
        assert!(
            pending.is_err(),
            "the body ends only once the client has sent it all"
        );
        assert_eq!(budget.used(), 60, "dropped frames are not charged");
        drop(tx);
        let error = body.frame().await.unwrap().unwrap_err();
        let found = BodyLimitError::find(&error).expect("a BodyLimitError");
        assert!(matches!(
            found,
            BodyLimitError::OverBudget { limit: 100, .. }
        ));
        let status = tonic::Status::from_error(Box::new(error));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.get_error_details().retry_info().is_some());
        drop(body);
        assert_eq!(budget.used(), 0);
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
