//! Shutdown as a value: whoever owns the [`ShutdownTrigger`] (the signal
//! handler in `main`, or a test) decides when, and every task that holds a
//! [`Shutdown`] hears it. Servers take a `Shutdown` as a parameter, so
//! tests inject their own instead of sending signals.

use tokio::sync::watch;

/// Creates a trigger and the first listener.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

/// Starts the shutdown.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    /// Tells every [`Shutdown`] to stop. Calling it again does nothing.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    #[cfg(test)]
    pub(crate) fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

/// Hears the shutdown.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// A listener that never fires, for tools that run until killed.
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive for the life of the process, so the
        // receiver never reports a closed channel, which would read as
        // "shut down".
        std::mem::forget(tx);
        Shutdown { rx }
    }

    /// Whether shutdown has started.
    pub(crate) fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits until shutdown starts. A dropped trigger counts as shutdown.
    pub(crate) async fn wait(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// Waits for SIGINT or SIGTERM (Ctrl-C elsewhere).
pub(crate) async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_hears_the_trigger() {
        let (trigger, mut a) = shutdown_channel();
        let mut b = trigger.subscribe();
        assert!(!a.is_triggered());
        trigger.trigger();
        a.wait().await;
        b.wait().await;
        assert!(b.is_triggered());
    }
}
