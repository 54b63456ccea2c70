//! The one shutdown signal every controller gets a copy of.
//!
//! [`channel`] gives a [`Trigger`] and a [`Shutdown`] future that any number of controllers
//! can clone; firing the trigger (or dropping it) resolves every copy. Controllers hand it to
//! `Controller::graceful_shutdown_on`, so running reconciles finish and no new one starts.

use futures::FutureExt as _;
use futures::channel::oneshot;
use futures::future::{BoxFuture, Shared};

/// Resolves when the controllers are to stop. Cheap to clone.
pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Fires the [`Shutdown`] it was made with.
#[derive(Debug)]
pub struct Trigger(oneshot::Sender<()>);

impl Trigger {
    /// Tells every controller holding a copy of the signal to stop.
    pub fn fire(self) {
        // NB: an error means every receiver is gone: nobody is left to stop.
        let _ = self.0.send(());
    }
}

/// A trigger and the signal it fires. Dropping the trigger fires the signal too, so a
/// controller can never outlive the code that started it by accident.
pub fn channel() -> (Trigger, Shutdown) {
    let (sender, receiver) = oneshot::channel::<()>();
    let signal = receiver.map(|_| ()).boxed().shared();
    (Trigger(sender), signal)
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use futures::poll;

    use super::*;

    #[tokio::test]
    async fn every_copy_resolves_when_the_trigger_fires() {
        let (trigger, signal) = channel();
        let copy = signal.clone();
        assert_eq!(poll!(signal.clone()), Poll::Pending);
        trigger.fire();
        signal.await;
        copy.await;
    }

    #[tokio::test]
    async fn dropping_the_trigger_also_stops_the_controllers() {
        let (trigger, signal) = channel();
        drop(trigger);
        signal.await;
    }
}
