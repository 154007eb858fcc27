//! Fuzz .npy and .npz readers from bytes; every tensor that reads is materialised so view validation is
//! exercised end to end.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.npy_npz");
    if let Ok(ck) = if data.starts_with(b"\x93NUMPY") { comer_port::formats::npy::read_npy_slice(path, data.to_vec()) } else { comer_port::formats::npy::read_npz(path, None, data) } {
        for (_, t) in ck.tensors() {
            let _ = t.to_f32();
        }
    }
});
