//! The `comer-port` binary: parse, run, print the error chain, exit with a meaningful code.
//! Mirrors ripgrep's thin `main`: the command line (`cli/`, the only place `anyhow` is used)
//! belongs to the binary; all work lives in the library.

mod cli;

fn main() {
    // Like every Unix filter (ripgrep, cat): a closed stdout (`comer-port demo | head`)
    // ends the process quietly instead of panicking inside `println!`. Rust sets SIGPIPE
    // to "ignore" before main; this restores the default.
    #[cfg(target_os = "linux")]
    // SAFETY: called first in main, before any thread exists; signal() only swaps the
    // disposition of SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // The forward allocates and frees 30-50 MB activation buffers per op. glibc serves each
    // from a fresh mmap that the kernel must zero page by page (about 10% of a ViT-CoMer-S
    // forward, docs/performance.md); served from the heap and kept for reuse instead, the
    // pages are faulted once. Peak RSS is unchanged: the heap only keeps what was in use.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any allocation-heavy
    // work and before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    std::process::exit(cli::main());
}
