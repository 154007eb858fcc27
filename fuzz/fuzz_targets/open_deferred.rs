//! Fuzz the import's reader path (issue 14): `formats::open_with` under
//! `ReadLimits::defer_crc`, where a stored record's CRC-32 is checked on first use
//! (`Storage::check`, or `Storage::accept_crc` from a hash taken while writing), against the
//! eager `formats::open` on the same file. A differential target: the two must agree —
//! whatever eager accepts, deferred opens and every storage's check (both routes) passes,
//! with the same bytes in every tensor; whatever deferred refuses at open, eager refuses. Seeded like `open_file`.
#![no_main]
use comer_port::formats::{self, ReadLimits};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { std::path::PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let path = dir.join(format!("comer-fuzz-deferred-{}.bin", std::process::id()));
    let Ok(mut f) = std::fs::File::create(&path) else { return };
    if f.write_all(data).is_err() {
        return;
    }
    drop(f);
    let eager = formats::open(&path);
    let deferred = formats::open_with(&path, &ReadLimits { defer_crc: true, ..ReadLimits::default() });
    match (&eager, &deferred) {
        (Ok(e), Ok(d)) => {
            let (et, dt) = (e.tensors(), d.tensors());
            assert_eq!(et.len(), dt.len());
            for ((ek, ev), (dk, dv)) in et.iter().zip(&dt) {
                assert_eq!(ek, dk);
                // Half the storages by the writer's route (hash handed over), half by check.
                if dv.is_whole_storage() && ek.len() % 2 == 0 {
                    let h = crc32fast::hash(dv.storage().bytes());
                    assert!(dv.storage().accept_crc(h).is_ok(), "{ek}: eager accepted, hashed route refused");
                }
                assert!(dv.check_storage(true).is_ok(), "{ek}: eager accepted, deferred refused");
                assert_eq!(ev.to_le_bytes(), dv.to_le_bytes(), "{ek}");
            }
        }
        (Err(formats::FormatError::CrcMismatch { .. }), Ok(d)) => {
            // The eager reader refused a record when the pickle named it; the deferred one
            // refuses it when a tensor first uses it (a record named only by a value the
            // pickle then discarded is never read, so never checked: no assertion here).
            for (_, v) in d.tensors() {
                let _ = v.check_storage(false);
            }
        }
        (Ok(_), Err(e)) => panic!("deferred refused what eager accepted: {e}"),
        _ => {}
    }
    let _ = std::fs::remove_file(&path);
});
