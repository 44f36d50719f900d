//! Crash points for the fault suite.
//!
//! `COLEND_CRASH_AT=point[@n][,point[@n]…]` makes the process kill itself
//! with SIGKILL (as `kill -9` would) the `n`-th time (default: the first)
//! it passes `point`. Unset, a crash point is one relaxed atomic load.
//! The points are named where they are placed:
//!
//! | point | where |
//! |---|---|
//! | `acquisition.submit.after_commit` | application committed, before the reply |
//! | `acquisition.journey.after_downstream` | a step's downstream call succeeded, before the local commit |
//! | `acquisition.journey.after_commit` | a step's transition committed, before the next step |
//! | `acquisition.outbox.after_insert` | a status change and its outbox event committed, before the relay |
//! | `funding.reserve.after_commit` | a reservation committed, before the reply |
//! | `funding.outbox.after_insert` | a loan event committed to the outbox, before the relay |
//!
//! `COLEND_PAUSE_AT=point:millis` makes a pause point wait (see [`pause_point`]):
//! `acquisition.journey.before_funding`, before the funding step, and
//! `acquisition.journey.before_commit`, before a step's transition (a journey
//! owner stalled there holds its lease without renewing it).
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static ARMED: AtomicBool = AtomicBool::new(true);
static POINTS: OnceLock<Mutex<HashMap<String, (u64, u64)>>> = OnceLock::new();

fn points() -> &'static Mutex<HashMap<String, (u64, u64)>> {
    POINTS.get_or_init(|| {
        let spec = std::env::var("COLEND_CRASH_AT").unwrap_or_default();
        let mut map = HashMap::new();
        for p in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, n) = match p.split_once('@') {
                Some((name, n)) => (name, n.parse().unwrap_or(1)),
                None => (p, 1),
            };
            map.insert(name.to_string(), (n.max(1), 0));
        }
        if map.is_empty() {
            ARMED.store(false, Ordering::Relaxed);
        }
        Mutex::new(map)
    })
}

/// Passes crash point `name`: kills the process here when it is armed.
pub fn crash_point(name: &str) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let due = {
        let mut map = points().lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(name) {
            Some((n, seen)) => {
                *seen += 1;
                *seen == *n
            }
            None => false,
        }
    };
    if due {
        eprintln!("crash point {name} reached: killing the process (SIGKILL)");
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
        // `kill` is always there on the images colend runs on; if not, abort.
        std::process::abort();
    }
}

/// Passes pause point `name`: waits there when `COLEND_PAUSE_AT` names it
/// (`point:millis[,point:millis…]`), so a test can change the world (cut a
/// network path) at a known step. Unset, it returns at once.
pub async fn pause_point(name: &str) {
    static PAUSES: OnceLock<HashMap<String, u64>> = OnceLock::new();
    let pauses = PAUSES.get_or_init(|| {
        std::env::var("COLEND_PAUSE_AT")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| {
                let (n, ms) = p.trim().split_once(':')?;
                Some((n.to_string(), ms.parse().ok()?))
            })
            .collect()
    });
    if let Some(ms) = pauses.get(name) {
        tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
    }
}
