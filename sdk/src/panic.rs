//! User code that panics: handlers, guards, policy checks and the program run under
//! [`catch`], so a panic becomes an ordinary error and never takes the reconciler (or a
//! CLI verb) down with it. The default panic hook still prints the panic to stderr,
//! except for a function given a secret ([`catch_quietly`]): its message may quote the
//! plaintext.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Once;
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

thread_local! {
    /// Whether a panic on this thread is one whose message must not be printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// [`catch`] for a function given a secret: its panic's message is not printed either.
///
/// The first call wraps the process's panic hook (whatever it is then) with one that,
/// on a thread inside `catch_quietly`, prints only where the panic was. A hook the
/// program sets afterwards replaces the wrapper.
pub(crate) fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static WRAP_HOOK: Once = Once::new();
    WRAP_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let at = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
                eprintln!("a function given a secret panicked{at}; its message is not shown");
            } else {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = catch(f);
    QUIET.with(|q| q.set(was));
    result
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
