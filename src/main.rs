//! The `comer-port` binary: parse, run, print the error chain, exit with a meaningful code.
//! Mirrors ripgrep's thin `main`; all work lives in the library.

fn main() {
    std::process::exit(comer_port::cli::main());
}
