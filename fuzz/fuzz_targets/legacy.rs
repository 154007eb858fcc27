//! Fuzz the pre-1.6 legacy reader (formats::legacy) from bytes; every tensor that reads is materialised so view validation is
//! exercised end to end.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.legacy");
    if let Ok(ck) = comer_port::formats::legacy::read_slice(path, data) {
        for (_, t) in ck.tensors() {
            let _ = t.to_f32();
        }
    }
});
