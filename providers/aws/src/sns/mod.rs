//! SNS: topics and subscriptions.

pub mod subscription;
pub mod topic;

pub use subscription::{Subscription, SubscriptionRef, SUBSCRIPTION};
pub use topic::{Topic, TopicRef, TOPIC};

use crate::kind::Kinds;

pub(crate) fn register(kinds: &mut Kinds) {
    kinds.insert(TOPIC.token, &topic::TopicKind);
    kinds.insert(SUBSCRIPTION.token, &subscription::SubscriptionKind);
}
