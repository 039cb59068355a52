//! A submitted task being watched, and the index of watched tasks by due time.

use super::*;

/// A submitted task being watched.
#[derive(Debug, Clone)]
pub(super) struct Task {
    pub(super) key: String,
    /// Its batch (whose policy decides which images are kept).
    pub(super) batch: String,
    pub(super) task_id: String,
    pub(super) image_num: u8,
    /// When it was submitted (for tasks recovered from the store: when this run saw them).
    pub(super) started: Instant,
    pub(super) due: Instant,
    /// Last progress reading and when it was taken (seconds since `started`).
    pub(super) progress: Option<(f64, f64)>,
    /// The reading before it.
    pub(super) prev_progress: Option<(f64, f64)>,
    pub(super) last_poll: Option<Instant>,
    pub(super) errors: u32,
    /// Only fresh URLs are needed (the task already succeeded); it holds no slots.
    pub(super) refresh: bool,
    /// A query for it is under way.
    pub(super) polling: bool,
    /// Found running in the store at start: it may have finished long before this run's first
    /// poll, so that poll says nothing about how long generations take.
    pub(super) recovered: bool,
}

/// The tasks being watched, with an index by due time of those not being polled right now, so
/// the next poll is found without a scan (a large backlog may hold many tasks).
#[derive(Debug, Default)]
pub(super) struct Running {
    pub(super) tasks: HashMap<String, Task>,
    pub(super) by_due: BTreeSet<(Instant, String)>,
}

impl Running {
    pub(super) fn insert(&mut self, task: Task) {
        self.remove(&task.key);
        if !task.polling {
            self.by_due.insert((task.due, task.key.clone()));
        }
        self.tasks.insert(task.key.clone(), task);
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Task> {
        let task = self.tasks.remove(key)?;
        if !task.polling {
            self.by_due.remove(&(task.due, task.key.clone()));
        }
        Some(task)
    }

    /// The task not being polled that is due first.
    pub(super) fn next_due(&self) -> Option<(String, Instant)> {
        self.by_due.first().map(|(due, key)| (key.clone(), *due))
    }

    /// Marks a task as being polled; returns a copy to work on (re-`insert` it to update it).
    pub(super) fn start_poll(&mut self, key: &str) -> Option<Task> {
        let task = self.tasks.get_mut(key).filter(|t| !t.polling)?;
        self.by_due.remove(&(task.due, task.key.clone()));
        task.polling = true;
        let mut copy = task.clone();
        copy.polling = false;
        Some(copy)
    }

    /// Ends a poll that left the task in place unchanged.
    pub(super) fn end_poll(&mut self, key: &str) {
        if let Some(task) = self.tasks.get_mut(key).filter(|t| t.polling) {
            task.polling = false;
            self.by_due.insert((task.due, task.key.clone()));
        }
    }

    pub(super) fn contains_key(&self, key: &str) -> bool {
        self.tasks.contains_key(key)
    }

    pub(super) fn len(&self) -> usize {
        self.tasks.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(key: &str, due: Instant) -> Task {
        Task {
            key: key.into(),
            batch: "b".into(),
            task_id: "1".into(),
            image_num: 1,
            started: due,
            due,
            progress: None,
            prev_progress: None,
            last_poll: None,
            errors: 0,
            refresh: false,
            polling: false,
            recovered: false,
        }
    }

    #[test]
    fn the_running_index_follows_polls_and_updates() {
        let t0 = Instant::now();
        let mut r = Running::default();
        r.insert(task("a", t0 + Duration::from_secs(3)));
        r.insert(task("b", t0 + Duration::from_secs(1)));
        r.insert(task("c", t0 + Duration::from_secs(2)));
        assert_eq!(r.next_due().unwrap().0, "b");
        // Being polled: out of the index, still running.
        let mut b = r.start_poll("b").unwrap();
        assert!(r.start_poll("b").is_none(), "not polled twice at once");
        assert_eq!(r.next_due().unwrap().0, "c");
        assert!(r.contains_key("b"));
        // The poll moved it later.
        b.due = t0 + Duration::from_secs(5);
        r.insert(b);
        r.end_poll("b");
        assert_eq!(r.by_due.len(), 3);
        assert_eq!(r.remove("c").unwrap().key, "c");
        assert_eq!(r.next_due().unwrap().0, "a");
        // A poll that changed nothing puts the task back as it was.
        r.start_poll("a").unwrap();
        r.end_poll("a");
        assert_eq!(r.next_due().unwrap().0, "a");
        // Removed while being polled.
        r.start_poll("a").unwrap();
        r.remove("a");
        assert_eq!(r.next_due().unwrap().0, "b");
        assert_eq!(r.len(), 1);
        assert_eq!(r.by_due.len(), 1);
    }
}
