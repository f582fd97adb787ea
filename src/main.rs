//! The `medgate` command. Parsing and dispatch only; the work is in the library.

fn main() {
    std::process::exit(medgate::cli::main());
}
