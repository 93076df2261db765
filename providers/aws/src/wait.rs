//! Waiting for AWS to finish what it accepted: bounded polling.
//!
//! Some AWS operations return at once and finish later (an ElastiCache cluster takes
//! minutes to become `available`, an Auto Scaling group minutes to be gone). [`until`]
//! polls such a resource at once, then at a short, growing interval, and gives up after
//! a bound. Every waiter is bounded: an endpoint that never finishes (moto keeps a
//! deleted ElastiCache cluster `deleting` forever) fails the step instead of hanging.
//!
//! The bound is each kind's default (say 30 minutes for ElastiCache), or the number of
//! seconds in the environment variable `CAIRN_AWS_WAIT_TIMEOUT`, which replaces every
//! default. A resource's custom timeouts (`ResourceExt::timeouts`) bound the whole
//! provider call as well, whichever is shorter.

use std::future::Future;
use std::time::Duration;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use cairn_sdk::ProviderError;
use tokio::time::Instant;

use crate::error::{aws_error, missing};

/// The environment variable that replaces every default bound, in seconds.
pub(crate) const BOUND_VAR: &str = "CAIRN_AWS_WAIT_TIMEOUT";

/// The longest pause between two polls.
const MAX_INTERVAL: Duration = Duration::from_secs(10);

/// What one poll found.
#[derive(Debug)]
pub(crate) enum Poll<T> {
    /// The wait is over.
    Done(T),
    /// Not yet: the state the resource is in now (`creating`, `deleting`, ...).
    Waiting(String),
}

/// The bound to use: `CAIRN_AWS_WAIT_TIMEOUT` (whole seconds, more than 0) if set,
/// else `default`.
pub(crate) fn bound(default: Duration) -> Duration {
    std::env::var(BOUND_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&secs| secs > 0)
        .map_or(default, Duration::from_secs)
}

/// Polls `poll` until it is done, for at most `bound(default)`: at once, then after
/// 1 s, 2 s, 4 s, 8 s and every 10 s from then on. An error from a poll ends the wait
/// with that error (a poll reports a state that can never reach the goal, such as
/// `create-failed`, as a refusal).
///
/// Running out of time is `Uncertain`: AWS accepted the request and may still finish
/// it, so the engine keeps the step pending and settles it on the next run. The message
/// names the resource, the goal, the state it was stuck in and how to wait longer.
pub(crate) async fn until<T, F, Fut>(goal: &str, default: Duration, poll: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>, ProviderError>>,
{
    until_within(goal, bound(default), poll).await
}

/// Settles a delete call's `answer` for a resource AWS takes a while to remove, then
/// waits (for at most `bound(default)`) until it is gone. `state` polls it: its status
/// now, `None` once it is gone. An answer saying it does not exist (`missing` by
/// `codes`) is done at once; a refusal is an error unless the resource is already in
/// state `deleting`, from an earlier run that stopped waiting, which is waited for again.
pub(crate) async fn deleted<T, E, F, Fut>(
    answer: Result<T, SdkError<E, HttpResponse>>,
    codes: &[&str],
    action: &str,
    hint: impl Fn(&str) -> Option<String>,
    default: Duration,
    deleting: &str,
    mut state: F,
) -> Result<(), ProviderError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<String>, ProviderError>>,
{
    match answer {
        Ok(_) => {}
        Err(e) if missing(&e, codes) => return Ok(()),
        Err(e) => {
            if state().await.ok().flatten().as_deref() != Some(deleting) {
                return Err(aws_error(action, e, hint));
            }
        }
    }
    until("deleted", default, || {
        let now = state();
        async move {
            Ok(match now.await? {
                None => Poll::Done(()),
                Some(status) => Poll::Waiting(status),
            })
        }
    })
    .await
}

async fn until_within<T, F, Fut>(goal: &str, limit: Duration, mut poll: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>, ProviderError>>,
{
    let deadline = Instant::now() + limit;
    let mut interval = Duration::from_secs(1);
    loop {
        let state = match poll().await? {
            Poll::Done(v) => return Ok(v),
            Poll::Waiting(state) => state,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(ProviderError::uncertain(format!(
                "still '{state}' after waiting {} for it to be {goal}; AWS may yet finish, and the next run settles it. \
                 To wait longer, set {BOUND_VAR} to a number of seconds and give the resource custom timeouts at least as long",
                show(limit)
            )));
        }
        // The last poll happens at the deadline itself, not an interval after it.
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

/// `30 min`, `90 s`, `1.5 s`.
fn show(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{:.1} s", d.as_secs_f64())
    } else if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_done_resource_is_not_polled_again_and_costs_no_time() {
        let started = Instant::now();
        let mut polls = 0;
        let got = until_within("available", Duration::from_secs(60), || {
            polls += 1;
            async { Ok(Poll::Done(7)) }
        })
        .await;
        assert_eq!(got.ok(), Some(7));
        assert_eq!(polls, 1);
        assert_eq!(started.elapsed(), Duration::ZERO, "polled at once");
    }

    #[tokio::test(start_paused = true)]
    async fn polls_back_off_and_stop_when_done() {
        let started = Instant::now();
        let mut times = Vec::new();
        let got = until_within("available", Duration::from_secs(600), || {
            times.push(started.elapsed().as_secs());
            let n = times.len();
            async move { Ok(if n < 7 { Poll::Waiting("creating".to_owned()) } else { Poll::Done(()) }) }
        })
        .await;
        assert!(got.is_ok());
        assert_eq!(times, [0, 1, 3, 7, 15, 25, 35]);
    }

    #[tokio::test(start_paused = true)]
    async fn running_out_of_time_is_uncertain_and_says_how_to_wait_longer() {
        let started = Instant::now();
        let err = until_within("deleted", Duration::from_secs(5), || async {
            Ok::<_, ProviderError>(Poll::<()>::Waiting("deleting".to_owned()))
        })
        .await
        .unwrap_err()
        .at(&cairn_sdk::Urn::new("dev", "aws:elasticache:CacheCluster", "cache"), cairn_sdk::ProviderOp::Delete);
        assert_eq!(started.elapsed(), Duration::from_secs(5), "the last poll is at the bound, not later");
        assert!(err.is_uncertain());
        assert_eq!(
            err.to_string(),
            "aws:elasticache:CacheCluster 'cache': still 'deleting' after waiting 5 s for it to be deleted; AWS may yet finish, \
             and the next run settles it. To wait longer, set CAIRN_AWS_WAIT_TIMEOUT to a number of seconds and give the \
             resource custom timeouts at least as long (the request may have taken effect)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_poll_ends_the_wait_with_its_error() {
        let err = until_within("available", Duration::from_secs(60), || async {
            Err::<Poll<()>, _>(ProviderError::failed("create-failed".to_owned()))
        })
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "create-failed");
    }

    #[test]
    fn bounds_read_as_minutes_or_seconds() {
        assert_eq!(show(Duration::from_secs(1800)), "30 min");
        assert_eq!(show(Duration::from_secs(90)), "90 s");
        assert_eq!(show(Duration::from_millis(1500)), "1.5 s");
    }
}
