//! Fuzz `formats::open` on a real file (issue 14): the path every user input takes — stat
//! and regular-file checks, the memory map, container sniffing, the zip directory (O(1)
//! index, overlap and duplicate-name refusal, one inflate budget), the CRC of mapped stored
//! members (streamed in chunks, pages released) and every reader behind it. Seeded with the
//! torch zip, legacy, npz and safetensors seeds plus the hostile shapes `make_seeds.sh`
//! generates (shared deflate streams, memo amplification). Every tensor that reads is
//! materialised.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    // One file per process, rewritten for each input (tmpfs when there is one).
    let dir = if std::path::Path::new("/dev/shm").is_dir() { std::path::PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let path = dir.join(format!("comer-fuzz-open-{}.bin", std::process::id()));
    let Ok(mut f) = std::fs::File::create(&path) else { return };
    if f.write_all(data).is_err() {
        return;
    }
    drop(f);
    if let Ok(ck) = comer_port::formats::open(&path) {
        for (_, t) in ck.tensors() {
            let _ = t.to_f32();
        }
    }
    // Nothing left in /dev/shm when the run ends (the map is gone with the checkpoint).
    let _ = std::fs::remove_file(&path);
});
