//! Wall-time accounting per forward stage (for `comer-port bench --profile`): a global
//! table of accumulated wall and process CPU seconds (their ratio is how many cores the
//! stage kept busy), switched on explicitly so normal runs pay nothing but an atomic load.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// (stage, wall seconds, process CPU seconds, calls).
static TABLE: Mutex<Vec<(&'static str, f64, f64, usize)>> = Mutex::new(Vec::new());

/// CPU seconds used so far by every thread of this process.
pub fn process_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc == 0 { ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9 } else { 0.0 }
}

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
    let (t, c) = (Instant::now(), process_cpu());
    let out = f();
    let (dt, dc) = (t.elapsed().as_secs_f64(), process_cpu() - c);
    if let Ok(mut tab) = TABLE.lock() {
        match tab.iter_mut().find(|(s, ..)| *s == stage) {
            Some(e) => {
                e.1 += dt;
                e.2 += dc;
                e.3 += 1;
            }
            None => tab.push((stage, dt, dc, 1)),
        }
    }
    out
}

/// (stage, wall seconds, process CPU seconds, calls), in first-seen order.
pub fn report() -> Vec<(&'static str, f64, f64, usize)> {
    TABLE.lock().map(|t| t.clone()).unwrap_or_default()
}
