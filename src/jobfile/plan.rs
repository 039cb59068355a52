//! Totals of an expanded job file and how long it takes at given limits (`runner plan`).

use std::collections::BTreeMap;

use super::Item;
use crate::api::{Size, Version};

/// Items and images of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Items (submits).
    pub items: u64,
    /// Images (the sum of `image_num`).
    pub images: u64,
}

impl Count {
    fn add(&mut self, item: &Item) {
        self.items += 1;
        self.images += u64::from(item.image_num);
    }
}

/// Totals of a job: overall, per size and per version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Items (submits).
    pub items: u64,
    /// Images.
    pub images: u64,
    /// Per size, ordered by width then height.
    pub by_size: BTreeMap<Size, Count>,
    /// Per version.
    pub by_version: BTreeMap<Version, Count>,
}

impl Totals {
    /// Totals of `items`.
    pub fn of(items: &[Item]) -> Totals {
        let mut t = Totals::default();
        for item in items {
            t.items += 1;
            t.images += u64::from(item.image_num);
            t.by_size.entry(item.size).or_default().add(item);
            t.by_version.entry(item.version).or_default().add(item);
        }
        t
    }
}

/// The account limits an estimate assumes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Images in generation at once (the account's concurrency slots).
    pub concurrency: u32,
    /// Mean seconds to generate one image.
    pub mean_gen_secs: f64,
    /// Submits per second.
    pub submit_qps: f64,
    /// Images per day the account may make, if limited.
    pub daily_quota: Option<u64>,
}

/// How long a batch takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Generation bound: images × mean generation time / concurrency.
    pub generation_secs: f64,
    /// Submit bound: items / submits per second.
    pub submit_secs: f64,
    /// The larger of the two: the batch cannot go faster than either allows.
    pub estimate_secs: f64,
    /// Days of quota: ceil(images / daily quota), when a quota is given.
    pub quota_days: Option<u64>,
}

impl Estimate {
    /// The estimate for `totals` under `limits`. The slots bound generation (each image holds
    /// one slot for its generation time) and the submit rate bounds how fast work starts; the
    /// batch takes at least the larger, and about that when the slots are kept busy.
    pub fn new(totals: &Totals, limits: &Limits) -> Estimate {
        let generation_secs =
            totals.images as f64 * limits.mean_gen_secs / f64::from(limits.concurrency.max(1));
        let submit_secs = if limits.submit_qps > 0.0 {
            totals.items as f64 / limits.submit_qps
        } else {
            f64::INFINITY
        };
        Estimate {
            generation_secs,
            submit_secs,
            estimate_secs: generation_secs.max(submit_secs),
            quota_days: limits
                .daily_quota
                .filter(|q| *q > 0)
                .map(|q| totals.images.div_ceil(q)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobfile::Origin;

    fn item(size: Size, version: Version, image_num: u8) -> Item {
        Item {
            key: String::new(),
            batch: "b".into(),
            prompt: "猫".into(),
            size,
            version,
            image_num,
            variant: 0,
            tags: BTreeMap::new(),
            vars: BTreeMap::new(),
            template: None,
            line: 1,
            origin: Origin::JobFile,
        }
    }

    #[test]
    fn totals_group_by_size_and_version() {
        let items = [
            item(Size::new(512, 512), Version::V2, 2),
            item(Size::new(512, 512), Version::V2, 1),
            item(Size::new(1024, 1024), Version::V1, 4),
        ];
        let t = Totals::of(&items);
        assert_eq!((t.items, t.images), (3, 7));
        assert_eq!(
            t.by_size[&Size::new(512, 512)],
            Count {
                items: 2,
                images: 3
            }
        );
        assert_eq!(
            t.by_version[&Version::V1],
            Count {
                items: 1,
                images: 4
            }
        );
        let sizes: Vec<Size> = t.by_size.keys().copied().collect();
        assert_eq!(sizes, [Size::new(512, 512), Size::new(1024, 1024)]);
    }

    #[test]
    fn estimate_is_the_larger_bound_and_quota_days_round_up() {
        let t = Totals {
            items: 100,
            images: 160,
            ..Totals::default()
        };
        let limits = Limits {
            concurrency: 2,
            mean_gen_secs: 20.0,
            submit_qps: 1.0,
            daily_quota: Some(50),
        };
        let e = Estimate::new(&t, &limits);
        assert_eq!(e.generation_secs, 1600.0);
        assert_eq!(e.submit_secs, 100.0);
        assert_eq!(e.estimate_secs, 1600.0);
        assert_eq!(e.quota_days, Some(4));
        // Fast generation: submits bound the batch.
        let fast = Estimate::new(
            &t,
            &Limits {
                mean_gen_secs: 0.5,
                ..limits
            },
        );
        assert_eq!(fast.estimate_secs, 100.0);
        assert_eq!(
            Estimate::new(
                &t,
                &Limits {
                    daily_quota: None,
                    ..limits
                }
            )
            .quota_days,
            None
        );
    }
}
