//! Leader election: of all `ferrite-operator` processes, only the holder of one Lease runs
//! the controllers, so two replicas (or a rolling update) never choose blocks at once.
//!
//! The Lease (`ferrite-operator` in the operator's namespace, `coordination.k8s.io/v1`) is
//! taken, renewed and released by `kube-lease-manager`. This module decides what the Lease's
//! state means and acts on it; the decisions ([`Timing`], [`standing`], [`Vacancy`]) are
//! pure and unit-tested, the loops around them ([`run`]) are thin.
//!
//! - **Follower**: waits for the Lease. A Lease the leader released is noticed at once (the
//!   follower watches it); one a dead leader left behind is taken once it has expired,
//!   `--lease-duration` after its last renewal.
//! - **Leader**: runs the controllers while it can prove it holds the Lease. It watches its
//!   own Lease, and every renewal it sees moves a deadline (see [`Timing`]). When the deadline
//!   passes (renewals failing: the apiserver unreachable or too slow), or the Lease names
//!   another holder or none, the controllers are dropped at once — their in-flight requests
//!   cancelled — and [`run`] returns [`Error::Lost`]; the process exits non-zero and the
//!   Deployment restarts it as a follower. Re-joining in-process would be possible, but a
//!   fresh process is the standard way to be sure nothing of the old term keeps writing.
//! - **Stop** (SIGTERM): the controllers finish their running reconciles, then the leader
//!   releases the Lease, so a follower takes over at once instead of after the lease duration.
//!
//! NB: a Lease protects against a second writer only as far as clocks agree: renewals carry
//! the leader's wall-clock time and followers judge expiry by theirs. The leader stops a
//! margin ([`Timing::margin`]) before any follower may take over, which absorbs that much
//! clock skew plus the time to stop.

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerError, LeaseParams};
use tracing::{debug, error, info, warn};

use crate::shutdown::{self, Shutdown};

/// The Lease's default name.
pub const LEASE_NAME: &str = "ferrite-operator";
/// The Lease's default namespace (the operator's).
pub const DEFAULT_NAMESPACE: &str = "ferrite-system";
/// The default lease duration, as `--lease-duration` takes it.
pub const DEFAULT_LEASE_DURATION: &str = "15s";
/// The shortest lease duration accepted: below it the renewal, the stop margin and the
/// followers' takeover no longer fit in whole seconds.
pub const MIN_LEASE_DURATION: Duration = Duration::from_secs(3);
/// The longest lease duration accepted: a dead leader's Lease blocks every follower this long.
pub const MAX_LEASE_DURATION: Duration = Duration::from_secs(300);

/// Why the process is not (or no longer) the leader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lease duration cannot be used.
    #[error(
        "--lease-duration {given:?} is outside {MIN_LEASE_DURATION:?}..={MAX_LEASE_DURATION:?} or not whole seconds; use e.g. 15s"
    )]
    Duration {
        /// What was given.
        given: Duration,
    },
    /// Leadership was lost; the controllers have been stopped.
    #[error(
        "lost the leadership of Lease {namespace}/{name}: {loss}. The controllers were stopped; exiting so that this process restarts as a follower"
    )]
    Lost {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// What happened.
        loss: Loss,
    },
    /// Just after winning the Lease, it could not be read back to start the deadline.
    #[error(
        "cannot read Lease {namespace}/{name} back after taking it: {source}. Check that the apiserver is reachable and that the operator's RBAC lets it get, watch and patch leases in {namespace}"
    )]
    Confirm {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The controllers stopped although nobody asked them to.
    #[error(
        "the controllers stopped on their own while leading; released Lease {namespace}/{name} and exiting (see the log above for why they stopped)"
    )]
    ControllersStopped {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
    },
}

/// The result type of leader election.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How leadership was lost.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Loss {
    /// Another process holds the Lease.
    #[error("the Lease is now held by {holder}")]
    HeldBy {
        /// Its holder's identity.
        holder: String,
    },
    /// The Lease has no holder: someone released it.
    #[error("the Lease was released (it names no holder)")]
    Released,
    /// The Lease does not exist any more.
    #[error("the Lease was deleted")]
    Deleted,
    /// No renewal was seen in time, so a follower may take over soon.
    #[error(
        "the Lease was last seen renewed at {renewed}, and no renewal was seen before {deadline} (renewals are failing: the apiserver is unreachable or too slow, see the warnings above)"
    )]
    NotRenewed {
        /// When the Lease was last renewed, or `unknown`.
        renewed: String,
        /// The deadline that passed.
        deadline: String,
    },
    /// The lease manager found the Lease held by another process while renewing it.
    #[error("renewing found the Lease held by another process")]
    Taken,
}

/// Where the Lease is and who competes for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The Lease's name.
    pub name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This process's identity, unique among the replicas (the pod name).
    pub identity: String,
    /// The timing derived from the lease duration.
    pub timing: Timing,
}

/// Timing derived from the lease duration `D` (whole seconds, [`MIN_LEASE_DURATION`] to
/// [`MAX_LEASE_DURATION`]):
///
/// - the leader renews `D/3` after its last renewal (the lease manager's "grace" is `D - D/3`),
///   and retries a failed renewal every [`Timing::retry`];
/// - it stops leading `D - D/5` after its last renewal seen, unless another renewal is seen;
/// - a follower takes over no earlier than `D` after the last renewal (by its own clock).
///
/// With the default 15 s: renewals every 5 s, a stop 12 s after the last renewal seen, a
/// takeover after 15 s at the earliest: 7 s to retry failing renewals, 3 s of margin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    duration: Duration,
}

impl Timing {
    /// Checks `duration` and derives the rest from it.
    pub fn new(duration: Duration) -> Result<Self> {
        if duration < MIN_LEASE_DURATION
            || duration > MAX_LEASE_DURATION
            || duration.subsec_nanos() != 0
        {
            return Err(Error::Duration { given: duration });
        }
        Ok(Self { duration })
    }

    /// The lease duration.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The lease duration in whole seconds, as the Lease and the lease manager take it.
    pub fn duration_seconds(&self) -> u64 {
        self.duration.as_secs()
    }

    /// The lease manager's grace: how long before expiry the leader renews. Always at least
    /// 1 and less than the duration, as the lease manager requires.
    pub fn grace_seconds(&self) -> u64 {
        let d = self.duration_seconds();
        d - d / 3
    }

    /// How long before a follower may take over the leader stops: `D/5`.
    pub fn margin(&self) -> Duration {
        self.duration / 5
    }

    /// The pause before retrying a failed renewal or a failed step of the lease manager.
    pub fn retry(&self) -> Duration {
        (self.duration / 10).max(Duration::from_millis(300))
    }

    /// The leader's deadline after a renewal at `renewed`, for a Lease that says it lasts
    /// `lease_seconds` (the shorter of that and ours counts: followers go by the Lease's).
    pub fn deadline(&self, renewed: SystemTime, lease_seconds: Option<i32>) -> SystemTime {
        let ours = self.duration;
        let theirs = lease_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(ours, Duration::from_secs);
        renewed + ours.min(theirs).saturating_sub(self.margin())
    }
}

/// Parses `--lease-duration`: whole seconds, as `15s`, `15` or `1m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: use whole seconds, e.g. 15s or 1m"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        _ => return Err(format!("{text:?}: the unit must be s or m, e.g. 15s")),
    };
    let duration = Duration::from_secs(seconds);
    Timing::new(duration).map_err(|e| e.to_string())?;
    Ok(duration)
}

/// The identity of a process that was given none: `<hostname>-<pid>`.
pub fn default_identity(hostname: Option<&str>, pid: u32) -> String {
    let host = hostname
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .unwrap_or("ferrite-operator");
    format!("{host}-{pid}")
}

/// What the Lease says about the leader `identity`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// It holds the Lease and may lead until `until`, unless another renewal is seen.
    Holding {
        /// The deadline.
        until: SystemTime,
    },
    /// It no longer leads.
    Lost(Loss),
}

/// Judges the Lease as last seen (`None`: it does not exist) for the leader `identity` at
/// `now`.
pub fn standing(
    lease: Option<&Lease>,
    identity: &str,
    timing: &Timing,
    now: SystemTime,
) -> Standing {
    let Some(lease) = lease else {
        return Standing::Lost(Loss::Deleted);
    };
    let spec = lease.spec.as_ref();
    match spec.and_then(|s| s.holder_identity.as_deref()) {
        None | Some("") => return Standing::Lost(Loss::Released),
        Some(holder) if holder != identity => {
            return Standing::Lost(Loss::HeldBy {
                holder: holder.to_owned(),
            });
        }
        Some(_) => {}
    }
    let renewed = spec
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| SystemTime::from(t.0));
    let Some(renewed) = renewed else {
        return Standing::Lost(Loss::NotRenewed {
            renewed: "unknown".into(),
            deadline: show(now),
        });
    };
    let until = timing.deadline(renewed, spec.and_then(|s| s.lease_duration_seconds));
    if until <= now {
        return Standing::Lost(Loss::NotRenewed {
            renewed: show(renewed),
            deadline: show(until),
        });
    }
    Standing::Holding { until }
}

/// A follower's view of the Lease, to notice the moment it is released.
///
/// The lease manager, while another process holds the Lease, sleeps until that Lease would
/// expire. A leader that stops cleanly releases it earlier; this notices the release so the
/// follower can try at once.
#[derive(Clone, Debug, Default)]
pub struct Vacancy {
    holder: Option<String>,
}

impl Vacancy {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the Lease as seen (`None`: it does not exist); true when it was held by another
    /// process and now is not: a release worth acting on. A Lease that was free from the start
    /// is the lease manager's to take, so it does not count.
    pub fn observe(&mut self, lease: Option<&Lease>, identity: &str) -> bool {
        let holder = lease
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty());
        let was_held_by_other = self.holder.as_deref().is_some_and(|h| h != identity);
        let released = was_held_by_other && holder.is_none();
        self.holder = holder;
        released
    }
}

fn show(t: SystemTime) -> String {
    Timestamp::try_from(t).map_or_else(|_| format!("{t:?}"), |t| t.to_string())
}

/// Runs `controllers` while this process leads; returns `Ok` once `stop` resolved (the
/// controllers finished, the Lease released), [`Error::Lost`] when leadership was lost (the
/// controllers already dropped).
///
/// Until the Lease is won this waits, retrying what fails (a missing RBAC rule or an
/// unreachable apiserver is logged on every attempt).
pub async fn run<C, F>(
    client: Client,
    settings: &Settings,
    stop: impl Future<Output = ()>,
    controllers: C,
) -> Result<()>
where
    C: FnOnce(Shutdown) -> F,
    F: Future<Output = ()>,
{
    let mut stop = pin!(stop);
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let Some(manager) = follow(&client, &api, settings, stop.as_mut()).await else {
        info!("stopped before becoming the leader");
        return Ok(());
    };
    lead(&api, &manager, settings, stop, controllers).await
}

/// Waits until this process holds the Lease (`Some`), or `stop` resolves (`None`).
async fn follow(
    client: &Client,
    api: &Api<Lease>,
    settings: &Settings,
    mut stop: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<LeaseManager> {
    let timing = settings.timing;
    loop {
        let manager = tokio::select! {
            built = manager(client, settings) => match built {
                Ok(m) => m,
                Err(error) => {
                    warn!(%error, lease = %settings.name, namespace = %settings.namespace, "cannot set up leader election; retrying. Check that the apiserver is reachable and that the operator's RBAC lets it get, create and patch leases in its namespace");
                    tokio::select! {
                        () = tokio::time::sleep(timing.retry()) => continue,
                        () = stop.as_mut() => return None,
                    }
                }
            },
            () = stop.as_mut() => return None,
        };
        info!(identity = %settings.identity, lease = %settings.name, namespace = %settings.namespace, "waiting to become the leader");
        let mut lease_events = pin!(lease_events(api, &settings.name));
        let mut vacancy = Vacancy::new();
        let mut events_ended = false;
        let mut changed = Box::pin(manager.changed());
        let rebuild = loop {
            tokio::select! {
                result = &mut changed => {
                    match result {
                        Ok(true) => break false,
                        Ok(false) => {}
                        Err(error) => {
                            warn!(%error, "leader election step failed; retrying");
                            tokio::time::sleep(timing.retry()).await;
                        }
                    }
                    changed = Box::pin(manager.changed());
                }
                event = lease_events.next(), if !events_ended => match event {
                    Some(Ok(lease)) if vacancy.observe(lease.as_ref(), &settings.identity) => {
                        info!("the leader released the Lease; trying to take it now");
                        break true;
                    }
                    Some(Err(error)) => debug!(%error, "cannot watch the Lease (only delays noticing a release)"),
                    Some(Ok(_)) => {}
                    None => events_ended = true,
                },
                () = stop.as_mut() => {
                    drop(changed);
                    // NB: a stop can land between the lease manager winning the Lease and
                    // telling us; releasing is a no-op unless this process holds it.
                    release(&manager, settings).await;
                    return None;
                }
            }
        };
        drop(changed);
        if !rebuild {
            return Some(manager);
        }
        // The lease manager keeps its own idea of when the old holder's Lease expires; a
        // fresh one reads the Lease again and takes it if it is free.
    }
}

async fn manager(client: &Client, settings: &Settings) -> Result<LeaseManager, LeaseManagerError> {
    let timing = settings.timing;
    // NB: LeaseParams::new panics unless 0 < grace < duration; Timing guarantees that.
    let params = LeaseParams::new(
        settings.identity.clone(),
        timing.duration_seconds(),
        timing.grace_seconds(),
    );
    LeaseManager::new(
        client.clone(),
        &settings.name,
        &settings.namespace,
        params,
        LeaseCreateMode::AutoCreate,
    )
    .await
}

/// The Lease as it changes (`None` while it does not exist), retrying with backoff.
fn lease_events(
    api: &Api<Lease>,
    name: &str,
) -> impl Stream<Item = Result<Option<Lease>, watcher::Error>> + Send + use<> {
    watcher::watch_object(api.clone(), name).default_backoff()
}

/// How the leader's term ended.
enum End {
    Stopped,
    Lost(Loss),
    ControllersStopped,
}

async fn lead<C, F>(
    api: &Api<Lease>,
    manager: &LeaseManager,
    settings: &Settings,
    mut stop: std::pin::Pin<&mut impl Future<Output = ()>>,
    controllers: C,
) -> Result<()>
where
    C: FnOnce(Shutdown) -> F,
    F: Future<Output = ()>,
{
    let timing = settings.timing;
    let lost = |loss: Loss| Error::Lost {
        namespace: settings.namespace.clone(),
        name: settings.name.clone(),
        loss,
    };
    // The deadline starts from the renewal the lease manager just wrote.
    let lease = api
        .get_opt(&settings.name)
        .await
        .map_err(|source| Error::Confirm {
            namespace: settings.namespace.clone(),
            name: settings.name.clone(),
            source,
        })?;
    let until = match standing(
        lease.as_ref(),
        &settings.identity,
        &timing,
        SystemTime::now(),
    ) {
        Standing::Holding { until } => until,
        Standing::Lost(loss) => return Err(lost(loss)),
    };
    info!(identity = %settings.identity, lease = %settings.name, namespace = %settings.namespace, "became the leader; starting the controllers");

    let (trigger, shutdown) = shutdown::channel();
    let end = {
        let mut controllers = pin!(controllers(shutdown));
        let mut renewing = pin!(keep_renewing(manager, &timing));
        let mut watchdog = pin!(watch_own_lease(
            api,
            &settings.name,
            &settings.identity,
            &timing,
            until
        ));
        tokio::select! {
            loss = &mut renewing => End::Lost(loss),
            loss = &mut watchdog => End::Lost(loss),
            () = &mut controllers => End::ControllersStopped,
            () = stop.as_mut() => {
                info!("stopping: the controllers finish their running reconciles, then the Lease is released");
                trigger.fire();
                // Still the leader until the controllers are done: keep renewing and watching.
                tokio::select! {
                    loss = &mut renewing => End::Lost(loss),
                    loss = &mut watchdog => End::Lost(loss),
                    () = &mut controllers => End::Stopped,
                }
            }
        }
    };
    match end {
        End::Stopped => {
            release(manager, settings).await;
            Ok(())
        }
        End::Lost(loss) => {
            // Not released: this process can no longer prove it holds the Lease.
            error!(%loss, "lost the leadership; the controllers were stopped");
            Err(lost(loss))
        }
        End::ControllersStopped => {
            release(manager, settings).await;
            Err(Error::ControllersStopped {
                namespace: settings.namespace.clone(),
                name: settings.name.clone(),
            })
        }
    }
}

/// Keeps the lease manager renewing; returns when it reports the Lease lost.
async fn keep_renewing(manager: &LeaseManager, timing: &Timing) -> Loss {
    loop {
        match manager.changed().await {
            Ok(true) => {}
            Ok(false) => return Loss::Taken,
            Err(error) => {
                warn!(%error, "cannot renew the Lease; retrying until the deadline");
                tokio::time::sleep(timing.retry()).await;
            }
        }
    }
}

/// Watches the leader's own Lease; returns once it is lost or the deadline passes.
async fn watch_own_lease(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    timing: &Timing,
    mut until: SystemTime,
) -> Loss {
    let mut events = pin!(lease_events(api, name));
    let mut renewed = "before the start".to_owned();
    let mut events_ended = false;
    loop {
        let left = until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let passed = Loss::NotRenewed {
            renewed: renewed.clone(),
            deadline: show(until),
        };
        tokio::select! {
            () = tokio::time::sleep(left) => return passed,
            event = events.next(), if !events_ended => match event {
                Some(Ok(lease)) => match standing(lease.as_ref(), identity, timing, SystemTime::now()) {
                    Standing::Holding { until: next } => {
                        until = next;
                        renewed = lease
                            .as_ref()
                            .and_then(|l| l.spec.as_ref())
                            .and_then(|s| s.renew_time.as_ref())
                            .map_or_else(|| "unknown".into(), |t| t.0.to_string());
                    }
                    Standing::Lost(loss) => return loss,
                },
                Some(Err(error)) => warn!(%error, "cannot watch the Lease; the deadline stands"),
                None => events_ended = true,
            },
        }
    }
}

/// Releases the Lease if this process holds it, so a follower takes over at once.
async fn release(manager: &LeaseManager, settings: &Settings) {
    let timeout = settings.timing.margin();
    match tokio::time::timeout(timeout, manager.release()).await {
        Ok(Ok(())) => {
            info!(lease = %settings.name, namespace = %settings.namespace, "released the Lease");
        }
        Ok(Err(error)) => {
            warn!(%error, "cannot release the Lease; a follower takes over once it expires");
        }
        Err(_) => warn!(
            ?timeout,
            "releasing the Lease timed out; a follower takes over once it expires"
        ),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;

    fn timing(seconds: u64) -> Timing {
        Timing::new(Duration::from_secs(seconds)).unwrap()
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn lease(holder: Option<&str>, renewed: Option<SystemTime>, seconds: Option<i32>) -> Lease {
        Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                renew_time: renewed.map(|t| MicroTime(Timestamp::try_from(t).unwrap())),
                lease_duration_seconds: seconds,
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn the_default_timing_renews_every_5s_and_stops_3s_before_a_takeover() {
        let t = timing(15);
        assert_eq!(t.duration_seconds(), 15);
        // The lease manager renews `grace` before expiry: 15 - 10 = 5 s after a renewal.
        assert_eq!(t.grace_seconds(), 10);
        assert_eq!(t.margin(), Duration::from_secs(3));
        assert_eq!(t.deadline(at(0), Some(15)), at(12));
        assert_eq!(t.retry(), Duration::from_millis(1500));
    }

    #[test]
    fn every_accepted_duration_renews_before_its_deadline_and_satisfies_the_lease_manager() {
        for seconds in 3..=300 {
            let t = timing(seconds);
            let grace = t.grace_seconds();
            assert!(0 < grace && grace < seconds, "{seconds}s: grace {grace}");
            let renew_at = Duration::from_secs(seconds - grace);
            let stop_at = t.deadline(at(0), None).duration_since(at(0)).unwrap();
            assert!(
                renew_at < stop_at,
                "{seconds}s: renews at {renew_at:?}, stops at {stop_at:?}"
            );
            assert!(stop_at < t.duration(), "{seconds}s");
            assert!(
                t.retry() < stop_at - renew_at,
                "{seconds}s: no time to retry"
            );
        }
    }

    #[test]
    fn durations_that_do_not_fit_are_refused_with_the_flag_named() {
        for bad in [
            Duration::from_secs(2),
            Duration::from_millis(15_500),
            Duration::from_secs(301),
        ] {
            let err = Timing::new(bad).unwrap_err();
            assert!(err.to_string().contains("--lease-duration"), "{err}");
        }
    }

    #[test]
    fn lease_durations_parse_as_whole_seconds_or_minutes() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("15ms").is_err());
        assert!(
            parse_duration("1s")
                .unwrap_err()
                .contains("--lease-duration")
        );
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn the_default_identity_is_the_hostname_and_the_pid() {
        assert_eq!(default_identity(Some("node1\n"), 42), "node1-42");
        assert_eq!(default_identity(None, 7), "ferrite-operator-7");
        assert_eq!(default_identity(Some(" "), 7), "ferrite-operator-7");
    }

    #[test]
    fn a_leader_renewed_in_time_holds_until_the_margin_before_expiry() {
        let l = lease(Some("me"), Some(at(100)), Some(15));
        assert_eq!(
            standing(Some(&l), "me", &timing(15), at(105)),
            Standing::Holding { until: at(112) }
        );
    }

    #[test]
    fn a_shorter_duration_in_the_lease_wins_because_followers_go_by_it() {
        let l = lease(Some("me"), Some(at(100)), Some(5));
        assert_eq!(
            standing(Some(&l), "me", &timing(15), at(101)),
            Standing::Holding { until: at(102) }
        );
    }

    #[test]
    fn a_leader_past_its_deadline_has_lost_even_if_the_lease_still_names_it() {
        let l = lease(Some("me"), Some(at(100)), Some(15));
        let Standing::Lost(Loss::NotRenewed { deadline, .. }) =
            standing(Some(&l), "me", &timing(15), at(112))
        else {
            panic!("expected NotRenewed");
        };
        assert_eq!(deadline, show(at(112)));
        let never_renewed = lease(Some("me"), None, Some(15));
        assert!(matches!(
            standing(Some(&never_renewed), "me", &timing(15), at(0)),
            Standing::Lost(Loss::NotRenewed { .. })
        ));
    }

    #[test]
    fn another_holder_a_release_or_a_deletion_end_the_term() {
        let t = timing(15);
        let other = lease(Some("them"), Some(at(100)), Some(15));
        assert_eq!(
            standing(Some(&other), "me", &t, at(101)),
            Standing::Lost(Loss::HeldBy {
                holder: "them".into()
            })
        );
        let free = lease(None, None, None);
        assert_eq!(
            standing(Some(&free), "me", &t, at(101)),
            Standing::Lost(Loss::Released)
        );
        assert_eq!(
            standing(None, "me", &t, at(101)),
            Standing::Lost(Loss::Deleted)
        );
    }

    #[test]
    fn a_follower_acts_on_a_release_only_after_seeing_another_holder() {
        let mut v = Vacancy::new();
        // Free from the start: the lease manager takes it by itself.
        assert!(!v.observe(Some(&lease(None, None, None)), "me"));
        assert!(!v.observe(None, "me"));
        assert!(!v.observe(Some(&lease(Some("them"), Some(at(1)), Some(15))), "me"));
        assert!(!v.observe(Some(&lease(Some("them"), Some(at(6)), Some(15))), "me"));
        assert!(v.observe(Some(&lease(None, None, None)), "me"));
        // Seen once.
        assert!(!v.observe(Some(&lease(None, None, None)), "me"));
        // Our own release is not a reason to retry.
        assert!(!v.observe(Some(&lease(Some("me"), Some(at(9)), Some(15))), "me"));
        assert!(!v.observe(Some(&lease(None, None, None)), "me"));
        // A deleted Lease counts as released.
        assert!(!v.observe(Some(&lease(Some("them"), Some(at(9)), Some(15))), "me"));
        assert!(v.observe(None, "me"));
    }

    #[test]
    fn a_loss_explains_itself() {
        let loss = Error::Lost {
            namespace: "ferrite-system".into(),
            name: LEASE_NAME.into(),
            loss: Loss::HeldBy {
                holder: "operator-b".into(),
            },
        };
        let text = loss.to_string();
        assert!(
            text.contains("Lease ferrite-system/ferrite-operator"),
            "{text}"
        );
        assert!(text.contains("held by operator-b"), "{text}");
        assert!(text.contains("restarts as a follower"), "{text}");
    }
}
