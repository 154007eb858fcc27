//! Fuzz the torch.save zip reader (formats::torch_zip) from bytes; every tensor that reads is materialised so view validation is
//! exercised end to end.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.torch_zip");
    if let Ok(ck) = comer_port::formats::torch_zip::read_slice(path, data.to_vec()) {
        for (_, t) in ck.tensors() {
            let _ = t.to_f32();
        }
    }
});
