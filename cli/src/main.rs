//! The `clearskies` command-line tool (`shared/CLI.md` is its contract).
//!
//! Status: the commands arrive with the pairing, drivers and folder issues. Until then the tool
//! reports its version and says plainly that a command is not available yet, with a non-zero
//! exit, rather than pretending.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!("clearskies {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(command) => {
            eprintln!(
                "clearskies: `{command}` is not available in this build yet; \
                 run `cargo run -p clearskies-tokio --example demo` for the session demo"
            );
            ExitCode::from(2)
        }
        None => {
            eprintln!("usage: clearskies [--home DIR] COMMAND ...  (see CLI.md)");
            ExitCode::from(2)
        }
    }
}
