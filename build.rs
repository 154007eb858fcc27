//! Build script: nothing without the `libtorch` feature. With it, compile `src/libtorch/shim.cpp`
//! (the C ABI to `torch::jit::load` and to PyTorch's own `torch.load`, docs/libtorch.md) against
//! the libtorch that torch-sys found (`DEP_TCH_LIBTORCH_LIB`, a torch 2.13 wheel with
//! `LIBTORCH_USE_PYTORCH=1`), link it with `libtorch_python` and the wheel's Python, and record
//! where both live (rpath, and `COMER_PORT_TORCH_SITE` for the interpreter's `sys.path`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_LIBTORCH").is_some() {
        #[cfg(feature = "libtorch")]
        libtorch::build();
    }
}

#[cfg(feature = "libtorch")]
mod libtorch {
    use std::path::PathBuf;
    use std::process::Command;

    /// What the wheel's interpreter says about itself and its torch.
    const QUERY: &str = r#"
import os, sysconfig, torch
print("PY_INCLUDE=" + sysconfig.get_path("include"))
print("PY_LIBDIR=" + str(sysconfig.get_config_var("LIBDIR")))
print("PY_LDVERSION=" + str(sysconfig.get_config_var("LDVERSION")))
print("PY_SHARED=" + str(sysconfig.get_config_var("Py_ENABLE_SHARED")))
print("TORCH_DIR=" + os.path.dirname(torch.__file__))
print("CXX11=" + str(int(torch._C._GLIBCXX_USE_CXX11_ABI)))
"#;

    fn fail(msg: &str) -> ! {
        panic!(
            "comer-port feature `libtorch`: {msg}\n  build it in a virtualenv with torch==2.13.*: \
             LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=/path/to/venv PATH=/path/to/venv/bin:$PATH \
             cargo build --release --features libtorch (docs/libtorch.md)"
        )
    }

    pub fn build() {
        for v in ["VIRTUAL_ENV", "LIBTORCH_USE_PYTORCH", "DEP_TCH_LIBTORCH_LIB"] {
            println!("cargo:rerun-if-env-changed={v}");
        }
        println!("cargo:rerun-if-changed=src/libtorch/shim.cpp");
        // The interpreter torch-sys asked (its build.rs: `python` in a virtualenv, else `python3`).
        let python = if std::env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
        let out = Command::new(python)
            .args(["-c", QUERY])
            .output()
            .unwrap_or_else(|e| fail(&format!("cannot run `{python}`: {e}")));
        if !out.status.success() {
            fail(&format!("`{python}` cannot import torch: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let get = |k: &str| -> String {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::to_owned))
                .unwrap_or_else(|| fail(&format!("`{python}` did not report {k}")))
        };
        if get("PY_SHARED") != "1" {
            fail(&format!("`{python}` has no shared libpython to embed (Py_ENABLE_SHARED is not 1)"));
        }
        // The libtorch tch links: the same files the interpreter's torch loads.
        let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
            .map(PathBuf::from)
            .unwrap_or_else(|_| fail("torch-sys did not report DEP_TCH_LIBTORCH_LIB"));
        let torch_dir = PathBuf::from(get("TORCH_DIR"));
        if lib.canonicalize().ok() != torch_dir.join("lib").canonicalize().ok() {
            fail(&format!(
                "tch links {} but `{python}` imports torch from {}: one wheel must serve both",
                lib.display(),
                torch_dir.display()
            ));
        }
        let include = torch_dir.join("include");
        cc::Build::new()
            .cpp(true)
            .pic(true)
            .warnings(false)
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .include(get("PY_INCLUDE"))
            .flag("-std=c++17")
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", get("CXX11")))
            .flag("-DGLOG_USE_GLOG_EXPORT")
            .file("src/libtorch/shim.cpp")
            .compile("comer_port_libtorch_shim");
        let py_lib = get("PY_LIBDIR");
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-search=native={py_lib}");
        println!("cargo:rustc-link-lib=torch_python");
        println!("cargo:rustc-link-lib=python{}", get("PY_LDVERSION"));
        // Found at run time without LD_LIBRARY_PATH.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{py_lib}");
        let site = torch_dir.parent().unwrap_or(&torch_dir);
        println!("cargo:rustc-env=COMER_PORT_TORCH_SITE={}", site.display());
    }
}
