//! Unit tests of the SQLite store.

use super::*;
use std::collections::BTreeMap;

use crate::api::{Size, Verdict, Version};
use crate::jobfile::Origin;
use crate::store::{ImageState, ItemState, Queries, Store};
use sqlx::sqlite::SqliteConnectOptions;

fn item(batch: &str, n: u32, image_num: u8) -> Item {
    Item {
        key: format!("{:032x}", u128::from(n) + 0xabc0_0000),
        batch: batch.into(),
        prompt: format!("提示{n}"),
        size: Size::new(512, 512),
        version: Version::V2,
        image_num,
        variant: 0,
        tags: BTreeMap::from([("sku".to_string(), format!("A-{n}"))]),
        vars: BTreeMap::new(),
        template: None,
        line: n,
        origin: Origin::JobFile,
    }
}

fn listed(idx: u32, verdict: Verdict) -> ListedImage {
    ListedImage {
        idx,
        url: format!("http://h/{idx}.png"),
        url_expires_at: now_ms() + 60_000,
        width: 512,
        height: 512,
        verdict,
        keep: ArchivePolicy::default().keeps(verdict),
    }
}

#[tokio::test]
async fn open_is_private_exclusive_and_refuses_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = SqliteStore::open(&path).await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let busy = SqliteStore::open(&path).await.unwrap_err();
    assert!(busy.is_busy(), "{busy}");
    assert!(
        busy.to_string()
            .contains("in use by another runner process")
    );
    // Read-only opening works beside the writer.
    SqliteStore::open_read_only(&path)
        .await
        .unwrap()
        .status()
        .await
        .unwrap();
    store.close().await;
    drop(store);
    SqliteStore::open(&path).await.unwrap();

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![b'x'; 8192]).unwrap();
    let e = SqliteStore::open(&garbage).await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");

    let foreign = dir.path().join("foreign.db");
    {
        let pool = connect_new(&foreign).await;
        sqlx::query("CREATE TABLE photos (id INTEGER)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let before = std::fs::read(&foreign).unwrap();
    let e = SqliteStore::open(&foreign).await.unwrap_err();
    assert!(matches!(e, StoreError::Foreign { .. }), "{e}");
    assert!(e.to_string().contains("photos"));
    let e = SqliteStore::open_read_only(&foreign).await.unwrap_err();
    assert!(matches!(e, StoreError::Foreign { .. }), "{e}");
    // Refused untouched: not switched to WAL (which rewrites the header), no WAL files.
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
    for ext in ["db-wal", "db-shm"] {
        assert!(!foreign.with_extension(ext).exists(), "{ext} created");
    }
}

#[tokio::test]
async fn a_damaged_store_is_refused_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let store = SqliteStore::open(&path).await.unwrap();
        let items: Vec<Item> = (0..200).map(|n| item("b", n, 1)).collect();
        store
            .load_items("b", ArchivePolicy::default(), "f.yaml", &items)
            .await
            .unwrap();
        store.close().await;
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    assert!(bytes.len() >= 4 * page, "{} bytes", bytes.len());
    bytes[3 * page..4 * page].fill(0xff);
    std::fs::write(&path, bytes).unwrap();
    let e = SqliteStore::open(&path).await.unwrap_err();
    assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
    assert!(e.to_string().contains("restore it from a backup"), "{e}");
    assert!(!e.is_busy());
}

async fn connect_new(path: &Path) -> SqlitePool {
    pool_options()
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn loading_twice_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
    let items: Vec<Item> = (0..5).map(|n| item("b", n, 1)).collect();
    let a = store
        .load_items("b", ArchivePolicy::default(), "f.yaml", &items)
        .await
        .unwrap();
    assert_eq!(
        a,
        LoadSummary {
            added: 5,
            existing: 0
        }
    );
    let mut more = items.clone();
    more.push(item("b", 9, 2));
    let b = store
        .load_items("b", ArchivePolicy::default(), "f.yaml", &more)
        .await
        .unwrap();
    assert_eq!(
        b,
        LoadSummary {
            added: 1,
            existing: 5
        }
    );
    let pending = store.pending_items(&[], None, 100).await.unwrap();
    assert_eq!(pending.len(), 6);
    // Paging by cursor.
    let first = store.pending_items(&[], None, 2).await.unwrap();
    let next = store
        .pending_items(&[], Some((&first[1].batch, first[1].seq)), 10)
        .await
        .unwrap();
    assert_eq!(next.len(), 4);
    assert_eq!(next[0].seq, first[1].seq + 1);
    assert!(
        store
            .pending_items(&["other".into()], None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_item_lifecycle_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
    let it = item("b", 1, 3);
    store
        .load_items(
            "b",
            ArchivePolicy::default(),
            "f",
            std::slice::from_ref(&it),
        )
        .await
        .unwrap();
    store.mark_submitting(&it.key).await.unwrap();
    assert!(
        store.mark_submitting(&it.key).await.is_err(),
        "not pending any more"
    );
    store
        .mark_running(&it.key, "1659384536691865192")
        .await
        .unwrap();
    let running = store.running_tasks(&[]).await.unwrap();
    assert_eq!(running[0].task_id, "1659384536691865192");
    // Default policy: pass and review kept, block skipped.
    let fetch = store
        .mark_succeeded(
            &it.key,
            &[
                listed(0, Verdict::Pass),
                listed(1, Verdict::Review),
                listed(2, Verdict::Block),
            ],
        )
        .await
        .unwrap();
    assert_eq!(fetch.iter().map(|f| f.idx).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(store.images_to_fetch(&[]).await.unwrap().len(), 2);
    store
        .mark_archived(&it.key, 0, "images/x-0.png", "aa", 10)
        .await
        .unwrap();
    let st = &store.status().await.unwrap()[0];
    assert_eq!(st.items["fetching"], 1);
    let rec = store
        .mark_archived(&it.key, 1, "images/x-1.png", "bb", 11)
        .await
        .unwrap();
    assert_eq!(rec.tags["sku"], "A-1");
    let st = &store.status().await.unwrap()[0];
    assert_eq!(st.items["done"], 1);
    assert_eq!(st.images["archived"], 2);
    assert_eq!(st.images["skipped"], 1);
    assert_eq!(st.verdicts["block"], 1);
    assert!(st.min_slack_ms.unwrap() > 0);
    let records = store.image_records("b").await.unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[2].state, ImageState::Skipped);
    assert!(records[2].path.is_none());
    // Verify found the file gone: back to fetching.
    store.requeue_image(&it.key, 1, "missing").await.unwrap();
    assert_eq!(store.status().await.unwrap()[0].items["fetching"], 1);
    assert!(store.running_tasks(&[]).await.unwrap()[0].fetching);
}

#[tokio::test]
async fn interrupted_submits_are_recovered_as_ambiguous() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
    let items: Vec<Item> = (0..3).map(|n| item("b", n, 1)).collect();
    store
        .load_items("b", ArchivePolicy::default(), "f", &items)
        .await
        .unwrap();
    store.mark_submitting(&items[1].key).await.unwrap();
    let rec = store.recover().await.unwrap();
    assert_eq!(rec.ambiguous, vec![items[1].key.clone()]);
    let st = &store.status().await.unwrap()[0];
    assert_eq!(st.items["pending"], 3);
    assert_eq!(st.ambiguous_items, 1);
    assert!(store.recover().await.unwrap().ambiguous.is_empty());
}

#[tokio::test]
async fn failures_are_requeued_by_class() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
    let items: Vec<Item> = (0..3).map(|n| item("b", n, 1)).collect();
    store
        .load_items("b", ArchivePolicy::default(), "f", &items)
        .await
        .unwrap();
    for (it, class) in items.iter().zip([
        ErrorClass::Permanent,
        ErrorClass::Timeout,
        ErrorClass::Timeout,
    ]) {
        store.mark_submitting(&it.key).await.unwrap();
        store
            .mark_failed(&it.key, class, Some(1), "x")
            .await
            .unwrap();
    }
    assert_eq!(
        store.status().await.unwrap()[0].failed_by_class["timeout"],
        2
    );
    assert_eq!(store.requeue_failed(&[], Some("timeout")).await.unwrap(), 2);
    assert_eq!(store.count_items(&[], ItemState::Pending).await.unwrap(), 2);
    assert_eq!(store.requeue_failed(&[], None).await.unwrap(), 1);
    assert_eq!(store.count_items(&[], ItemState::Failed).await.unwrap(), 0);
}

#[tokio::test]
async fn token_cache_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
    let now = now_ms();
    assert!(store.cached_token("u", "c", now).await.unwrap().is_none());
    store
        .save_token("u", "c", "24.tok", now + 10_000)
        .await
        .unwrap();
    assert_eq!(
        store.cached_token("u", "c", now).await.unwrap().unwrap().0,
        "24.tok"
    );
    assert!(
        store
            .cached_token("u", "other", now)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .cached_token("u", "c", now + 20_000)
            .await
            .unwrap()
            .is_none()
    );
    store.clear_token().await.unwrap();
    assert!(store.cached_token("u", "c", now).await.unwrap().is_none());
}
