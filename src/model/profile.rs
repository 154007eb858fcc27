//! Wall-time accounting per forward stage (for `comer-port bench --profile`): a global
//! table of accumulated seconds, switched on explicitly so normal runs pay nothing but an
//! atomic load.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<Vec<(&'static str, f64, usize)>> = Mutex::new(Vec::new());

/// Switch accounting on or off, clearing the table.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
    if let Ok(mut t) = TABLE.lock() {
        t.clear();
    }
}

/// Run `f`, adding its wall time to `stage` when accounting is on.
pub fn timed<T>(stage: &'static str, f: impl FnOnce() -> T) -> T {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let t = Instant::now();
    let out = f();
    let dt = t.elapsed().as_secs_f64();
    if let Ok(mut tab) = TABLE.lock() {
        match tab.iter_mut().find(|(s, _, _)| *s == stage) {
            Some(e) => {
                e.1 += dt;
                e.2 += 1;
            }
            None => tab.push((stage, dt, 1)),
        }
    }
    out
}

/// (stage, seconds, calls), in first-seen order.
pub fn report() -> Vec<(&'static str, f64, usize)> {
    TABLE.lock().map(|t| t.clone()).unwrap_or_default()
}
