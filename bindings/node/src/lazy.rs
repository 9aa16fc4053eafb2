//! A value that a background start produces once (an agent connecting to its HTTP peer, a
//! service waiting for its agent), readable synchronously (`NOT_READY` until then) or awaited.

use connect_core::{Error, ErrorKind};
use tokio::sync::watch;

/// The sending side, kept by whoever starts the value.
pub(crate) type Filler<T> = watch::Sender<Option<Result<T, Error>>>;

/// The receiving side.
#[derive(Debug, Clone)]
pub(crate) struct Lazy<T> {
    rx: watch::Receiver<Option<Result<T, Error>>>,
    what: &'static str,
}

impl<T: Clone> Lazy<T> {
    /// An empty value and the sender that fills it.
    pub(crate) fn new(what: &'static str) -> (Filler<T>, Lazy<T>) {
        let (tx, rx) = watch::channel(None);
        (tx, Lazy { rx, what })
    }

    /// A value that is already there.
    pub(crate) fn ready(value: Result<T, Error>, what: &'static str) -> Lazy<T> {
        let (tx, lazy) = Lazy::new(what);
        tx.send_replace(Some(value));
        lazy
    }

    /// The value if it is there: `NOT_READY` while it is starting, its error if it failed.
    pub(crate) fn get(&self) -> Result<T, Error> {
        match &*self.rx.borrow() {
            Some(r) => r.clone(),
            None => Err(Error::new(
                ErrorKind::NotReady,
                format!("the {} is still starting; await ready() first", self.what),
            )),
        }
    }

    /// Waits for the value.
    pub(crate) async fn wait(&self) -> Result<T, Error> {
        let mut rx = self.rx.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v
                .as_ref()
                .cloned()
                .unwrap_or_else(|| Err(Error::new(ErrorKind::Internal, "empty value"))),
            Err(_) => Err(Error::new(
                ErrorKind::Closed,
                format!("the {} was dropped while starting", self.what),
            )),
        }
    }
}
