//! The `comer-port` binary: parse, run, print the error chain, exit with a meaningful code.
//! Mirrors ripgrep's thin `main`; all work lives in the library.

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
    std::process::exit(comer_port::cli::main());
}
