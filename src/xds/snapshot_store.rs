//! The snapshot store: one writer, many readers.
//!
//! The writer builds a whole [`Snapshot`] (every group, every type, every
//! resource encoded) before it swaps it in, so a stream can never see a
//! version that is only partly there. Readers hold a cheap handle, read the
//! current snapshot without locking anyone else out, and wait for the next
//! one. Only the [`SnapshotWriter`] can publish; it is deliberately not
//! `Clone`, so there is one place that decides what teal serves.

use std::sync::Arc;

use tokio::sync::watch;

use crate::xds::snapshot::{BuildError, Snapshot, SnapshotInput, TypeLabels};

/// Creates an empty store and returns its writer and a reader.
pub fn snapshot_store() -> (SnapshotWriter, SnapshotReader) {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::empty()));
    (SnapshotWriter { tx }, SnapshotReader { rx })
}

/// The single writer of the store.
#[derive(Debug)]
pub struct SnapshotWriter {
    tx: watch::Sender<Arc<Snapshot>>,
}

impl SnapshotWriter {
    /// Builds `input` as `version` and, if it is valid, makes it
    /// the version every stream serves. On error nothing changes.
    pub fn publish(
        &mut self,
        version: &str,
        input: &SnapshotInput,
    ) -> Result<Arc<Snapshot>, BuildError> {
        let snapshot = self.prepare(input, |_| version.to_owned())?;
        self.install(snapshot.clone());
        Ok(snapshot)
    }

    /// Builds `input` on top of the current snapshot, named with the version
    /// `version_for` returns for its content digest (see
    /// [`Snapshot::build_with`]), without serving it yet, so a caller can
    /// make it durable first and then [`install`](Self::install) it.
    pub fn prepare(
        &self,
        input: &SnapshotInput,
        version_for: impl FnOnce(&str) -> String,
    ) -> Result<Arc<Snapshot>, BuildError> {
        self.prepare_labelled(input, &TypeLabels::new(), version_for)
    }

    /// [`prepare`](Self::prepare), reusing the type labels `labels` where
    /// they named the same content (see [`Snapshot::build_labelled`]).
    pub(crate) fn prepare_labelled(
        &self,
        input: &SnapshotInput,
        labels: &TypeLabels,
        version_for: impl FnOnce(&str) -> String,
    ) -> Result<Arc<Snapshot>, BuildError> {
        let previous = self.tx.borrow().clone();
        Ok(Arc::new(Snapshot::build_labelled(
            input,
            Some(&previous),
            labels,
            version_for,
        )?))
    }

    /// Serves a snapshot built by [`prepare`](Self::prepare).
    pub fn install(&mut self, snapshot: Arc<Snapshot>) {
        self.tx.send_replace(snapshot);
    }

    /// The snapshot being served now.
    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A new reader of this store.
    pub(crate) fn reader(&self) -> SnapshotReader {
        SnapshotReader {
            rx: self.tx.subscribe(),
        }
    }
}

/// A reader of the store: what each stream holds.
#[derive(Clone, Debug)]
pub struct SnapshotReader {
    rx: watch::Receiver<Arc<Snapshot>>,
}

impl SnapshotReader {
    /// The snapshot being served now, without marking it seen.
    pub(crate) fn peek(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// The snapshot being served now, marking it seen.
    pub(crate) fn current(&mut self) -> Arc<Snapshot> {
        self.rx.borrow_and_update().clone()
    }

    /// Waits until a snapshot newer than the last one seen is published.
    /// Returns `false` once the writer is gone and none will come.
    pub(crate) async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::resources::ResourceType;
    use crate::xds::snapshot::GroupResources;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn input(clusters: &[&str]) -> SnapshotInput {
        let mut i = SnapshotInput::default();
        i.groups.insert(
            "edge".into(),
            GroupResources {
                clusters: clusters
                    .iter()
                    .map(|n| Cluster {
                        name: (*n).into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        );
        i
    }

    #[tokio::test]
    async fn readers_see_whole_versions_and_bad_input_changes_nothing() {
        let (mut writer, mut reader) = snapshot_store();
        assert_eq!(reader.current().version(), "");
        writer.publish("1", &input(&["a", "b"])).expect("valid");
        assert!(reader.changed().await);
        let snap = reader.current();
        assert_eq!(snap.version(), "1");
        assert_eq!(
            snap.group("edge")
                .of(ResourceType::Cluster)
                .resources()
                .len(),
            2
        );

        let err = writer
            .publish("2", &input(&["a", "a"]))
            .expect_err("duplicate");
        assert!(matches!(err, BuildError::DuplicateName { .. }));
        assert_eq!(writer.current().version(), "1");
        let no_change =
            tokio::time::timeout(std::time::Duration::from_millis(20), reader.changed()).await;
        assert!(
            no_change.is_err(),
            "a rejected publish must not wake readers"
        );
    }
}
