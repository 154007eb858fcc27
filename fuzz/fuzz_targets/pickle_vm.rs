//! Fuzz the restricted pickle VM directly (torchscript mode on, so the widest allowlist is
//! exercised); persistent ids resolve to a small owned storage.
#![no_main]
use comer_port::formats::pickle::{self, Ctx};
use comer_port::formats::{DType, Storage};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.pkl");
    let storage = Arc::new(Storage::Owned(vec![0u8; 256]));
    let mut load = |pid: &comer_port::formats::Value, at: usize| {
        let r = pickle::parse_storage_pid(path, "fuzz", at, pid)?;
        let v = pickle::whole_storage_view(r.dtype.unwrap_or(DType::U8), storage.clone());
        Ok(pickle::storage_value(v, &r.key))
    };
    // The default byte budget (grows with the bytes read), as every reader uses it.
    let ctx = Ctx { path, entry: "fuzz", torchscript: true, dry_run: false, strict_end: false, max_bytes: None };
    if let Ok((v, _)) = pickle::unpickle(&ctx, data, 0, &mut load) {
        let mut out = Vec::new();
        v.collect_tensors("", &mut out);
        for (_, t) in out {
            let _ = t.to_f32();
        }
    }
});
