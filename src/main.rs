//! The `medgate` command. Parsing and dispatch only; the work is in the library.

/// jemalloc instead of glibc's allocator. The gateway's allocation pattern (many short-lived
/// buffers from several threads: TLS records, FHIR JSON, sled's node updates) put glibc's
/// `_int_malloc`, `malloc_consolidate` and `free` at 15-20 % of the CPU at 64 concurrent
/// clients. With jemalloc, `medgate bench` stores 35-50 % more documents per second at 64 and
/// 256 clients, for about 30 MiB more resident memory under load (tests/benches/README.md).
/// Only Rust's allocations move: the PKCS#11 module keeps the C library's allocator. Its
/// options are compiled in from `.cargo/config.toml` (one arena per CPU, small thread caches,
/// freed pages returned after 1 s).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    std::process::exit(medgate::cli::main());
}
