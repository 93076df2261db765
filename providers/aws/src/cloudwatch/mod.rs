//! CloudWatch: metric alarms.

pub mod metric_alarm;

pub use metric_alarm::{MetricAlarm, MetricAlarmRef, METRIC_ALARM};

use crate::kind::Kinds;

pub(crate) fn register(kinds: &mut Kinds) {
    kinds.insert(METRIC_ALARM.token, &metric_alarm::MetricAlarmKind);
}
