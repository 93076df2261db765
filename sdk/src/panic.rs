//! User code that panics: handlers, guards, policy checks and the program run under
//! [`catch`], so a panic becomes an ordinary error and never takes the reconciler (or a
//! CLI verb) down with it. The default panic hook still prints the panic to stderr.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The message a panic carries: the `&str` or `String` given to `panic!`, or a
/// placeholder for any other payload.
pub(crate) fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

/// Runs `f`; a panic in it is caught and its message returned as the error.
///
/// Callers run user code on values they discard if it panics (a clone of `S`), so
/// nothing it left half-changed is used afterwards: hence `AssertUnwindSafe`.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| message(&*payload))
}

/// A future whose panics, on any poll, end it with the panic's message as the error.
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match catch(|| Pin::new(inner).poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(message) => Poll::Ready(Err(message)),
        }
    }
}
