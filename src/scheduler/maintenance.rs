//! Work on the store and the archive together outside a run: manifests rewritten from the
//! store, and `runner verify`.

use super::*;

/// Rewrites a batch's manifest from the store, record by record (memory stays flat however
/// large the batch), and puts back any missing sidecar.
pub async fn rewrite_manifest(
    store: &dyn Store,
    archive: &dyn Archive,
    batch: &str,
) -> Result<(), SchedulerError> {
    let mut manifest = archive.manifest(batch)?;
    let mut records = store.image_records_stream(batch);
    while let Some(record) = records.try_next().await? {
        manifest.push(&record)?;
    }
    drop(records);
    manifest.finish().await?;
    Ok(())
}

/// What [`verify`] found and did.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    /// Archived images checked.
    pub checked: u64,
    /// Of those, missing from the archive.
    pub missing: u64,
    /// Of those, with other bytes than recorded.
    pub corrupt: u64,
    /// Each problem, with its batch: requeued, so the next run downloads it again.
    pub requeued: Vec<(String, archive::verify::Problem)>,
    /// Leftover temp files removed.
    pub temp_files_removed: usize,
}

/// Re-hashes every archived image of `batches` against the store, requeues what is missing or
/// corrupt (the next run downloads it again with fresh URLs), clears leftover temp files and
/// rewrites each manifest from the store.
pub async fn verify(
    store: &dyn Store,
    archive: &dyn Archive,
    batches: &[String],
) -> Result<Verified, SchedulerError> {
    let mut out = Verified::default();
    for batch in batches {
        let records = store
            .image_records_stream(batch)
            .map_err(SchedulerError::from);
        let check = archive::verify::check_batch(archive, batch, records).await?;
        out.checked += check.checked;
        out.missing += check.missing;
        out.corrupt += check.corrupt;
        for p in check.problems {
            store.requeue_image(&p.item_key, p.index, p.reason).await?;
            out.requeued.push((batch.clone(), p));
        }
        out.temp_files_removed += archive.clear_temp(batch).await?;
        rewrite_manifest(store, archive, batch).await?;
    }
    Ok(out)
}
